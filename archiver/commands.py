"""What every command shares, core and built-in command plugins alike: the common options,
opening the runtime (bad configuration: one line, exit 2) and the stop signals.

Third-party command plugins may use these too; they are part of the public plugin API
(docs/plugins.md).
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click

if TYPE_CHECKING:
    from .runtime import Runtime

EXIT_CONFIG = 2

config_option = click.option("-c", "--config", "config_file", required=True,
                             type=click.Path(dir_okay=False), help="The YAML file.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def fail(message: str, code: int = EXIT_CONFIG) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def open_runtime(config_file: str, *, require_env: bool = True, create: bool = True,
                 read_only: bool = False,
                 on_progress: Callable[[str, dict[str, Any]], None] | None = None) -> Runtime:
    """:meth:`Runtime.open`, or ``error: ...`` and exit 2 (bad configuration, a missing
    ledger with ``create=False``, a ledger schema newer than this code)."""
    from .errors import ConfigError, LedgerError, PluginError
    from .runtime import Runtime
    try:
        rt = Runtime.open(config_file, require_env=require_env, create=create,
                          read_only=read_only, on_progress=on_progress)
    except (ConfigError, PluginError, LedgerError) as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits
    for warning in rt.loaded.warnings:
        click.echo(f"warning: {warning}", err=True)
    return rt


@contextmanager
def stop_signals(rt: Runtime, *, grace: float = 0.0,
                 announce: Callable[[str], None] | None = None) -> Iterator[None]:
    """SIGINT/SIGTERM while the block runs. ``grace`` 0: the first signal aborts in-flight
    writers (nothing partial is kept); otherwise the first drains (objects in flight get
    ``grace`` seconds to finish, nothing new starts) and the second aborts at once."""
    hits: list[int] = []
    say = announce or (lambda text: click.echo(text, err=True))

    def handler(signum, frame):
        hits.append(signum)
        if len(hits) > 1 or grace <= 0:
            if len(hits) == 1:
                say("stopping: aborting in-flight writes (nothing partial is kept)")
            rt.request_stop()
            return
        say(f"stopping: objects in flight get {grace:g}s to finish (again to abort now)")
        rt.request_drain()
        timer = threading.Timer(grace, rt.request_stop)
        timer.daemon = True
        timer.start()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
