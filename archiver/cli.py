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

EXIT_CONFIG = 2


def _fail(message: str, code: int = EXIT_CONFIG) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _plugins():
    from .errors import PluginError
    from .plugins import build_plugin_manager
    try:
        return build_plugin_manager()
    except PluginError as exc:
        _fail(str(exc))


def _load(config_file: str, plugins=None, require_env: bool = True):
    from .config import load_config
    from .errors import ConfigError
    plugins = plugins or _plugins()
    try:
        return plugins, load_config(config_file, plugins.registry, require_env=require_env)
    except ConfigError as exc:
        _fail(str(exc))


# Commands of the built-in plugins, listed by ``--help`` without importing them: loading
# every plugin costs ~0.5 s (pydantic models, requests), which ``--help`` should not pay.
# A test checks this table against what the plugins really register.
BUILTIN_PLUGIN_COMMANDS = {
    "audit": "The tamper-evident audit log.",
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


config_option = click.option("-c", "--config", "config_file", required=True,
                             type=click.Path(dir_okay=False), help="The YAML file.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@contextmanager
def _signals(pipeline):
    """First SIGINT/SIGTERM: stop and abort in-flight writers cleanly; second: exit now."""
    hits = []

    def handler(signum, frame):
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt
        click.echo("stopping: aborting in-flight writes (again to force)", err=True)
        pipeline.request_stop()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _run(config_file: str, job_ids, as_json: bool, dry_run: bool = False) -> None:
    from .ledger import open_ledger
    from .pipeline import Pipeline
    from .progress import Progress
    plugins, loaded = _load(config_file)
    if dry_run:
        from .compliance.plan import run_plan
        sys.exit(run_plan(loaded, plugins, job_ids, as_json))
    ledger = open_ledger(loaded.settings.state_dir)
    progress = Progress(enabled=not as_json and sys.stderr.isatty())
    pipeline = Pipeline(loaded, plugins, ledger, on_progress=progress.update)
    try:
        with _signals(pipeline), progress:
            report = pipeline.run(job_ids)
    finally:
        pipeline.close()
        ledger.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_report(report)
    sys.exit(report.exit_code)


def _print_report(report) -> None:
    click.echo(f"archived {len(report.archived)} job(s), {report.objects_written} object(s) "
               f"written, {report.bytes_received} bytes received; "
               f"{report.skipped} already archived, {len(report.nothing_to_store)} with nothing "
               f"to store, {len(report.waiting)} not finished yet")
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


@cli.command()
@config_option
@json_option
@dry_run_option
def run(config_file: str, as_json: bool, dry_run: bool) -> None:
    """One pass over every terminal job not yet archived."""
    _run(config_file, None, as_json, dry_run)


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
    from .ledger import open_ledger
    _, loaded = _load(config_file, require_env=False)  # reads the ledger only: no secrets
    ledger = open_ledger(loaded.settings.state_dir)
    try:
        data = ledger.summary()
        if job_id:
            data["job"] = ledger.job_report(job_id)
            data["events"] = ledger.events(job_id)
    finally:
        ledger.close()
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
@click.option("--older-than", default="1d", show_default=True,
              help="Only leftovers older than this (e.g. 30m, 12h, 1d).")
def cleanup(config_file: str, older_than: str) -> None:
    """Remove what crashed writers left: temporary files, open multipart uploads."""
    from .errors import ArchiverError
    from .ledger import open_ledger
    from .pipeline import Pipeline
    seconds = _duration(older_than)
    plugins, loaded = _load(config_file)
    ledger = open_ledger(loaded.settings.state_dir)
    pipeline = Pipeline(loaded, plugins, ledger)
    try:
        n = pipeline.recover()
        click.echo(f"discarded {n} writer(s) recorded in the ledger")
        failed = False
        for name, sink in pipeline.sinks.items():
            try:
                for item in sink.cleanup(seconds):
                    click.echo(f"{name}: removed {item}")
            except ArchiverError as exc:
                click.echo(f"error: sink {name}: {exc}", err=True)
                failed = True
        if failed:
            sys.exit(3)
    finally:
        pipeline.close()
        ledger.close()


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
    plugins, loaded = _load(config_file)
    if online:
        from .errors import ArchiverError
        for built in loaded.sinks:
            try:
                built.cls(built.config, label=built.label).preflight()
            except ArchiverError as exc:
                _fail(f"{built.path} ({built.label}): {exc}", 3)
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
