"""The ``archiver`` command line. Heavy modules are imported inside commands so that
``archiver --help`` stays fast; plugins add commands via ``archiver_register_commands``.

Exit codes: 0 every attempted job archived; 1 some job incomplete; 2 bad configuration
or usage; 3 fatal source or sink error (wrong API key, sink preflight); 4 a job was lost
(expired before it was archived); 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from contextlib import contextmanager

import click

from . import __version__

from .commands import EXIT_CONFIG, config_option, fail, json_option, open_runtime, stop_signals

_fail = fail


def _plugins():
    from .errors import PluginError
    from .plugins import build_plugin_manager
    try:
        return build_plugin_manager()
    except PluginError as exc:
        _fail(str(exc))


# Commands of the built-in plugins, listed by ``--help`` without importing them: loading
# every plugin costs ~0.5 s (pydantic models, requests), which ``--help`` should not pay.
# A test checks this table against what the plugins really register.
BUILTIN_PLUGIN_COMMANDS = {
    "audit": "The tamper-evident audit log.",
    "ledger": "The ledger: schema version, migrations, workers.",
    "replicate": "Copy archived jobs (payload and bag) from one sink to another.",
    "serve": "watch + a webhook endpoint, /healthz and /metrics.",
    "verify": "Re-read stored objects and compare them with the ledger and bags.",
    "watch": "Archive continuously: poll, archive, warn before expiry.",
}


class _Cli(click.Group):
    """Adds plugin commands the first time one of them is needed."""

    _loaded = False

    def _load_plugin_commands(self) -> None:
        if not self._loaded:
            self._loaded = True
            _plugins().hook.archiver_register_commands(cli=self)

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *BUILTIN_PLUGIN_COMMANDS})

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None:
            self._load_plugin_commands()
            cmd = super().get_command(ctx, name)
        return cmd

    def format_commands(self, ctx, formatter) -> None:
        limit = formatter.width - 6 - max(len(n) for n in self.list_commands(ctx))
        rows = [(name, self.commands[name].get_short_help_str(limit)
                 if name in self.commands else BUILTIN_PLUGIN_COMMANDS[name])
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)
        formatter.write_paragraph()
        formatter.write_text("Installed plugins may add commands: see `archiver plugins`.")


@click.group(cls=_Cli)
@click.version_option(__version__, prog_name="archiver")
@click.option("-v", "--verbose", count=True, help="-v for info, -vv for debug logs.")
def cli(verbose: int) -> None:
    """Archive Plangrep job results and artifacts into local and cloud sinks."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run(config_file: str, job_ids, as_json: bool, dry_run: bool = False,
         workers: int | None = None) -> None:
    from .progress import Progress
    if dry_run:
        from .dryrun import run_plan
        sys.exit(run_plan(config_file, job_ids, as_json))
    progress = Progress(enabled=not as_json and sys.stderr.isatty())
    rt = open_runtime(config_file, on_progress=progress.update)
    n = workers if workers is not None else rt.settings.workers
    try:
        with progress:
            report = _pass(rt, config_file, job_ids, n)
    finally:
        rt.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_report(report)
    sys.exit(report.exit_code)


def _pass(rt, config_file: str, job_ids, n: int):
    """Preflight, recovery of dead writers, then one pass in this process or with ``n``
    worker processes; SIGINT/SIGTERM abort in-flight writers (nothing partial kept)."""
    from .api import run
    with stop_signals(rt):
        return run(rt, job_ids=job_ids, workers=n, verbosity=_verbosity())


def _verbosity() -> int:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return int(root.params.get("verbose", 0)) if root is not None else 0


def _print_report(report) -> None:
    click.echo(f"archived {len(report.archived)} job(s), {report.objects_written} object(s) "
               f"written, {report.bytes_received} bytes received; "
               f"{report.skipped} already archived, {len(report.nothing_to_store)} with nothing "
               f"to store, {len(report.waiting)} not finished yet")
    for job_id, holder in sorted(report.busy.items()):
        click.echo(f"BUSY {job_id}: {holder}; not touched by this run", err=True)
    for job_id, why in sorted(report.parked.items()):
        click.echo(f"PARKED {job_id}: {why}", err=True)
    for job_id, problems in sorted(report.incomplete.items()):
        click.echo(f"INCOMPLETE {job_id}:", err=True)
        for p in problems:
            click.echo(f"  {p}", err=True)
    for job_id, msg in sorted(report.lost.items()):
        click.echo(f"LOST {job_id}: {msg}", err=True)
    if report.fatal:
        click.echo(f"error: {report.fatal}", err=True)
    if report.interrupted:
        click.echo("interrupted: nothing partial was left; rerun to finish", err=True)


dry_run_option = click.option("--dry-run", is_flag=True, help="List each job and object, "
                              "its key and retention in each sink; write nothing.")


workers_option = click.option("--workers", type=click.IntRange(min=1, max=64), default=None,
                              help="Worker processes (default: workers: in the config, 1).")


@cli.command()
@config_option
@json_option
@dry_run_option
@workers_option
def run(config_file: str, as_json: bool, dry_run: bool, workers: int | None) -> None:
    """One pass over every terminal job not yet archived."""
    _run(config_file, None, as_json, dry_run, workers)


@cli.command()
@config_option
@json_option
@dry_run_option
@click.argument("job_ids", nargs=-1, required=True)
def archive(config_file: str, as_json: bool, dry_run: bool, job_ids) -> None:
    """Archive the given jobs (again, if needed: stored copies are skipped)."""
    _run(config_file, list(job_ids), as_json, dry_run)


@cli.command()
@config_option
@json_option
@click.option("--job", "job_id", help="Show every stored copy of one job.")
def status(config_file: str, as_json: bool, job_id: str | None) -> None:
    """Jobs archived / incomplete / lost, and bytes per sink, from the ledger."""
    # reads the ledger only: no secrets, and a missing ledger is an error, not a new one
    rt = open_runtime(config_file, require_env=False, create=False)
    ledger = rt.ledger
    try:
        data = ledger.summary()
        if job_id:
            data["job"] = ledger.job_report(job_id)
            data["events"] = ledger.events(job_id)
    finally:
        rt.close()
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    jobs = data["jobs"]
    click.echo("jobs: " + (", ".join(f"{k} {v}" for k, v in sorted(jobs.items())) or "none"))
    for sink, s in sorted(data["sinks"].items()):
        click.echo(f"sink {sink}: {s['objects']} objects, {s['bytes']} bytes")
    for p in data["problems"]:
        click.echo(f"{p['state'].upper()} {p['job_id']}: {p['error']}")
    for w in data["expiry_warnings"]:
        click.echo(f"EXPIRES SOON {w['job_id']} (at {w['expires_at']}), not archived yet")
    if job_id:
        for c in data["job"]["copies"]:
            click.echo(f"{c['sink']}: {c['location'] or c['key']} {c['size']} bytes "
                       f"sha256 received {c['received'].get('sha256')} stored "
                       f"{c['stored'].get('sha256')}")


@cli.command()
@config_option
@json_option
@click.option("--older-than", default=None,
              help="Leftovers found by listing the store: only those older than this "
                   "(e.g. 30m, 12h, 1d; default 1d, or 0 with --force).")
@click.option("--force", is_flag=True, help="Discard every recorded writer, live or not: "
              "only when nothing else runs on this ledger.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def cleanup(config_file: str, as_json: bool, older_than: str | None, force: bool,
            dry_run: bool) -> None:
    """Remove what dead writers left: temporary files, open multipart uploads."""
    from .errors import ArchiverError
    from .recovery import recover_dead_writers
    seconds = _duration(older_than) if older_than is not None else (0.0 if force else 86400.0)
    rt = open_runtime(config_file, require_env=False, create=False)  # no API call: no key
    failed: list[str] = []
    removed: dict[str, list[str]] = {}
    try:
        rec = recover_dead_writers(rt, force=force, dry_run=dry_run)
        if not dry_run:
            for name, sink in rt.sinks.items():
                try:
                    removed[name] = list(sink.cleanup(seconds))
                except ArchiverError as exc:
                    failed.append(f"sink {name}: {exc}")
    finally:
        rt.close()
    failed += rec.failed
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "discarded": rec.discarded,
                               "live_writers_left_alone": rec.live,
                               "other_hosts_writers_left_alone": rec.elsewhere,
                               "removed_by_listing": removed, "errors": failed}, indent=2))
    else:
        verb = "would discard" if dry_run else "discarded"
        click.echo(f"{verb} {len(rec.discarded)} dead writer(s) recorded in the ledger; "
                   f"left alone {rec.live} live writer(s)"
                   + (f" and {rec.elsewhere} of other hosts" if rec.elsewhere else ""))
        for what in rec.discarded:
            click.echo(f"  {what}")
        for name, items in removed.items():
            for item in items:
                click.echo(f"{name}: removed {item}")
        for msg in failed:
            click.echo(f"error: {msg}", err=True)
    if failed:
        sys.exit(3)


@cli.command()
@config_option
@click.option("--drain", is_flag=True, help="Stop once nothing is left to claim.")
@click.option("--jsonl", is_flag=True, help="Events on stdout, one JSON object per line "
              "(how a supervisor reads its workers).")
@click.option("--since", type=float, default=None, hidden=True)
def worker(config_file: str, drain: bool, jsonl: bool, since: float | None) -> None:
    """Claim queued jobs from the ledger, soonest expiry first, and archive them."""
    from .workers.main import main as worker_main
    sys.exit(worker_main(config_file, drain=drain, jsonl=jsonl, since=since))


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise click.BadParameter(f"not a duration: {text!r} (e.g. 30m, 12h, 1d)") from None


@cli.group("config")
def config_group() -> None:
    """Validate configuration files."""


@config_group.command("check")
@config_option
@click.option("--online", is_flag=True, help="Also run each sink's preflight (network).")
def config_check(config_file: str, online: bool) -> None:
    """Validate FILE without any network or disk I/O (unless --online)."""
    from .errors import ConfigError, PluginError
    from .runtime import load_config_file
    try:
        _, loaded = load_config_file(config_file)
    except (ConfigError, PluginError) as exc:
        _fail(str(exc))
    if online:
        from .errors import ArchiverError
        for built in loaded.sinks:
            try:
                built.cls(built.config, label=built.label).preflight()
            except ArchiverError as exc:
                _fail(f"{built.path} ({built.label}): {exc}", 3)
    for warning in loaded.warnings:
        click.echo(f"warning: {warning}", err=True)
    names = ", ".join(f"{b.label} ({b.cls.name})" for b in loaded.sinks)
    click.echo(f"{config_file}: OK; source {loaded.source.cls.name}, sinks {names}")


@cli.command("plugins")
@json_option
def plugins_cmd(as_json: bool) -> None:
    """List plugins with their versions, hooks and component types."""
    infos = _plugins().infos
    rows = [{"name": i.name, "version": i.version, "module": i.module, "builtin": i.builtin,
             "hooks": i.hooks, "components": i.components} for i in infos.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        kind = "built-in" if r["builtin"] else "installed"
        click.echo(f"{r['name']} {r['version']} ({kind}, {r['module']})")
        click.echo(f"  components: {', '.join(r['components']) or '-'}")
        click.echo(f"  hooks: {', '.join(r['hooks'])}")


@cli.command()
@click.option("--port", default=8765, show_default=True)
@click.option("--no-demo", is_flag=True, help="Start empty instead of with the demo jobs.")
def emulator(port: int, no_demo: bool) -> None:
    """Run the Plangrep API emulator on 127.0.0.1 (for trying archiver out)."""
    from .testing.emulator import serve
    serve(port=port, demo=not no_demo)


@cli.command()
@click.option("--dir", "directory", default=".", type=click.Path(file_okay=False),
              show_default=True, help="Where ./archive and ./.archiver go.")
def demo(directory: str) -> None:
    """Archive the emulator's demo jobs into ./archive and show where everything went."""
    from .demo import run_demo
    sys.exit(run_demo(directory))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
