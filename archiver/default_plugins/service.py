"""``archiver watch`` and ``archiver serve``: continuous archiving (docs/operations.md).

Registered through ``archiver_register_commands`` like any plugin command; everything
heavy is imported when a command runs.

Exit codes: 0 stopped by SIGTERM/SIGINT (in-flight work drained or aborted, nothing
partial left); 2 bad configuration; 3 fatal: the API key was refused, a sink failed its
preflight, or the HTTP address could not be bound.
"""

from __future__ import annotations

import logging
import sys

import click

from ..commands import config_option, examples, log_format, quiet, warn
from ..hookspecs import hookimpl


def _start(config_file: str, serve: bool, poll_interval: float | None,
           workers: int | None = None) -> int:
    from ..commands import open_runtime

    rt = open_runtime(config_file)  # bad configuration: one line, exit 2
    loaded = rt.loaded
    try:
        return _serve(rt, loaded, config_file, serve, poll_interval, workers)
    finally:
        rt.close()


def _serve(rt, loaded, config_file: str, serve: bool, poll_interval: float | None,
           workers: int | None) -> int:
    from ..service import Service

    if serve:
        from ..service.webhooks import SecretStore

        s = loaded.settings.serve
        store = SecretStore.from_settings(s)
        if not store.configured and not s.insecure_accept_unsigned:
            click.echo(f"error: {config_file}: serve.secrets: no webhook secret configured; "
                       "set serve.secrets.default, per_job_file or per_job_dir (or, only "
                       "behind an authenticating proxy, serve.insecure_accept_unsigned: true)",
                       err=True)
            return 2
        try:
            store.check()
        except ValueError as exc:
            click.echo(f"error: {config_file}: {exc}", err=True)
            return 2
        d = s.secrets.per_job_dir
        if d is not None and not d.is_dir():
            warn(f"serve.secrets.per_job_dir {d} is not a directory (yet): deliveries "
                 "relying on per-job secrets are refused until it exists")
        if s.insecure_accept_unsigned:
            warn("serve.insecure_accept_unsigned is true: webhook deliveries are NOT "
                 "verified")
    n = workers if workers is not None else loaded.settings.workers
    if n > 1 and loaded.dispatcher is not None:
        click.echo(f"error: {config_file}: --workers/workers: {n} runs local worker "
                   f"processes, but dispatch.mode is {loaded.settings.dispatch.mode!r}: its "
                   "workers archive the jobs; drop one of the two", err=True)
        return 2
    service = Service(rt, serve=serve, poll_interval=poll_interval, workers=n,
                      config_file=config_file)

    def started(svc: Service) -> None:
        what = f"serving webhooks on {svc.url}{svc.serve_settings.path}" if serve else "watching"
        with_workers = f", {n} worker processes" if n > 1 else ""
        if svc.dispatcher is not None:
            with_workers = f", dispatching to {svc.dispatcher!r}"
        line = f"{what}; polling every {svc.watcher.interval:g}s{with_workers}"
        if log_format() == "json":  # one JSON object per line on stderr, nothing else
            logging.getLogger("archiver.service").info(line, extra={"event": "started"})
        elif not quiet():
            click.echo(f"archiver: {line}", err=True)

    try:
        return service.run(on_started=started)
    except OSError as exc:
        s = loaded.settings.serve
        click.echo(f"error: serve.host/serve.port {s.host}:{s.port}: cannot listen: "
                   f"{exc.strerror or exc}", err=True)
        return 3


_workers = click.option("--workers", type=click.IntRange(min=1, max=64), default=None,
                        help="Worker processes (default: workers: in the config, 1).")
# Tests only: the configuration refuses poll intervals below 5 s, as the API asks.
_test_poll = click.option("--test-poll-interval", type=float, default=None, hidden=True)


@hookimpl
def archiver_register_commands(cli) -> None:
    @cli.command(epilog=examples(
        "archiver watch                          # logs a line per poll and per job",
        "archiver watch --workers 4 --log-format json"))
    @config_option
    @_test_poll
    @_workers
    def watch(config_file: str, test_poll_interval: float | None,
              workers: int | None) -> None:
        """Archive continuously: poll every watch.poll_interval, soonest expiry first."""
        sys.exit(_start(config_file, False, test_poll_interval, workers))

    @cli.command(epilog=examples(
        "archiver serve                          # webhooks, /healthz, /metrics",
        "archiver serve -c prod.yaml --log-format json"))
    @config_option
    @_test_poll
    @_workers
    def serve(config_file: str, test_poll_interval: float | None,
              workers: int | None) -> None:
        """watch + a webhook endpoint, /healthz and /metrics (see docs/operations.md)."""
        sys.exit(_start(config_file, True, test_poll_interval, workers))
