"""What every command shares, core and built-in command plugins alike: the common options
(``-c`` with discovery, ``--json``), the exit codes, opening the runtime (a failure to
start: one line and a documented exit code), the stop signals, ``-q``/``-v``.

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

from .cli_logging import META_CONFIG, log_format, quiet, verbosity

if TYPE_CHECKING:
    from .runtime import Runtime

# Exit codes (docs/cli.md, "Exit codes").
EXIT_OK = 0
EXIT_INCOMPLETE = 1      # a job is incomplete (or parked); a compliance check found a problem
EXIT_CONFIG = 2          # could not start: configuration, usage, state_dir or ledger
EXIT_FATAL = 3           # the API key was refused, the API or a sink unusable
EXIT_LOST = 4            # a job expired before it was archived
EXIT_UNKNOWN_JOB = 5     # a job named on the command line is unknown (API or ledger)
EXIT_INTERNAL = 70       # a bug: an unexpected exception (traceback with -vv)
EXIT_INTERRUPTED = 130   # SIGINT/SIGTERM


def _discover(ctx: click.Context, param, value: str | None) -> str:
    from .discovery import NoConfig, find_config
    if ctx.resilient_parsing:  # shell completion: nothing to open, nothing to say
        return value
    try:
        path, origin = find_config(value)
    except NoConfig as exc:
        fail(str(exc))
        raise  # unreachable
    ctx.find_root().meta[META_CONFIG] = (path, origin)
    return path


config_option = click.option(
    "-c", "--config", "config_file", default=None, callback=_discover,
    type=click.Path(dir_okay=True), metavar="FILE",
    help="The YAML file (default: $ARCHIVER_CONFIG, ./archiver.yaml, "
         "$XDG_CONFIG_HOME/archiver/archiver.yaml).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def examples(*lines: str) -> str:
    """An epilog for ``--help``: ``Examples:`` and the command lines, unwrapped."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``30m``, ``12h``, ``1d`` in seconds (click.BadParameter if not)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise click.BadParameter(f"not a duration: {text!r} (e.g. 30m, 12h, 1d)") from None


def fail(message: str, code: int = EXIT_CONFIG) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
    """``warning: ...`` on stderr, unless ``-q``; a log record with ``--log-format json``
    (so that stderr stays one JSON object per line)."""
    if log_format() == "json":
        import logging
        logging.getLogger("archiver.cli").warning(message)
    elif not quiet():
        click.echo(f"warning: {message}", err=True)


def open_runtime(config_file: str, *, require_env: bool = True, create: bool = True,
                 read_only: bool = False,
                 on_progress: Callable[[str, dict[str, Any]], None] | None = None) -> Runtime:
    """:meth:`Runtime.open`, or ``error: ...`` and exit 2: bad configuration, a missing
    ledger with ``create=False``, a ledger schema newer than this code, a state_dir that
    cannot be created or written, a ledger locked by another process."""
    import sqlite3

    from .cli_logging import remember_secrets
    from .errors import ConfigError, LedgerError, PluginError
    from .runtime import Runtime, load_config_file
    try:
        plugins, loaded = load_config_file(config_file, require_env=require_env)
    except (ConfigError, PluginError) as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits
    remember_secrets(loaded)
    where = _ledger_place(loaded)
    try:
        rt = Runtime.open(config_file, require_env=require_env, create=create,
                          read_only=read_only, plugins=plugins, on_progress=on_progress,
                          loaded=loaded)
    except (ConfigError, PluginError, LedgerError) as exc:
        fail(str(exc))
        raise
    except sqlite3.OperationalError as exc:
        hint = (": another process holds it; try again when it is done" if "locked" in
                str(exc) else "")
        fail(f"cannot open the ledger {where}: {exc}{hint}")
        raise
    except (OSError, sqlite3.Error) as exc:
        detail = getattr(exc, "strerror", None) or str(exc)
        name = getattr(exc, "filename", None)
        fail(f"cannot open the ledger {where}: {detail}" + (f": {name}" if name else ""))
        raise
    for warning in rt.loaded.warnings:
        warn(warning)
    return rt


def _ledger_place(loaded: Any) -> str:
    settings = loaded.settings
    url = getattr(getattr(settings, "ledger", None), "url", None)
    if url is not None:
        return "(ledger.url)"
    return f"in state_dir {settings.state_dir}"


@contextmanager
def stop_signals(rt: Runtime, *, grace: float = 0.0,
                 announce: Callable[[str], None] | None = None) -> Iterator[None]:
    """SIGINT/SIGTERM while the block runs. ``grace`` 0: the first signal aborts in-flight
    writers (nothing partial is kept); otherwise the first drains (objects in flight get
    ``grace`` seconds to finish, nothing new starts) and the second aborts at once.
    Aborting (:meth:`Runtime.request_stop`) also cuts the sockets of downloads and uploads
    in flight (:mod:`archiver.cancel`): a stalled peer cannot hold the exit up."""
    hits: list[int] = []
    say = announce or (lambda text: click.echo(text, err=True))

    def handler(signum, frame):
        hits.append(signum)
        if len(hits) > 1 or grace <= 0:
            if len(hits) == 1:
                say("stopping: aborting in-flight writes (nothing partial is kept)")
            elif len(hits) == 2:
                say("stopping now: aborting in-flight writes (nothing partial is kept)")
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


def show_progress(as_json: bool = False) -> bool:
    """A progress display is wanted: stderr is a terminal, and neither ``--json`` nor
    ``-q`` nor JSON logs."""
    return (not as_json and not quiet() and log_format() != "json"
            and sys.stderr.isatty())


__all__ = ["EXIT_CONFIG", "EXIT_FATAL", "EXIT_INCOMPLETE", "EXIT_INTERNAL",
           "EXIT_INTERRUPTED", "EXIT_LOST", "EXIT_OK", "EXIT_UNKNOWN_JOB", "config_option",
           "examples", "fail", "json_option", "log_format", "open_runtime", "parse_duration", "quiet",
           "show_progress",
           "stop_signals", "verbosity", "warn"]
