"""The ``archiver`` command line. Heavy modules are imported inside commands so that
``archiver --help`` stays fast; plugins add commands via ``archiver_register_commands``.

The commands live by concept: :mod:`archiver.cli_run` (run, archive),
:mod:`archiver.cli_status` (status, ls), :mod:`archiver.cli_config` (config check),
:mod:`archiver.cli_logging` (-v/-q/--log-format, redaction); what command plugins share
is in :mod:`archiver.commands`.

Exit codes (docs/cli.md): 0 every attempted job archived; 1 some job incomplete; 2 could
not start (configuration, usage, state_dir, ledger); 3 fatal source or sink error (wrong
API key, sink preflight); 4 a job was lost (expired before it was archived); 5 a job
named on the command line is unknown; 70 internal error; 130 interrupted.
"""

from __future__ import annotations

import json
import sys

import click

from . import __version__
from .cli_config import config_group
from .cli_logging import prepare, shared_options
from .cli_run import archive, run
from .cli_status import ls, status
from .commands import (
    EXIT_CONFIG,
    EXIT_FATAL,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    config_option,
    examples,
    fail,
    json_option,
    open_runtime,
    parse_duration,
)

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
    "repair": "Restore objects verify finds altered or missing, from another sink or the API.",
    "replicate": "Copy archived jobs (payload and bag) from one sink to another.",
    "serve": "watch + a webhook endpoint, /healthz and /metrics.",
    "verify": "Re-read stored objects and compare them with the ledger and bags.",
    "watch": "Archive continuously: poll, archive, warn before expiry.",
}


class _Cli(click.Group):
    """Adds plugin commands the first time one of them is needed; gives every command
    the shared options (``-v``/``-q``/``--log-format`` after the command name too)."""

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
        return prepare(cmd) if cmd is not None else None

    def format_commands(self, ctx, formatter) -> None:
        limit = formatter.width - 6 - max(len(n) for n in self.list_commands(ctx))
        rows = [(name, self.commands[name].get_short_help_str(limit)
                 if name in self.commands else BUILTIN_PLUGIN_COMMANDS[name])
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)
        formatter.write_paragraph()
        formatter.write_text("Installed plugins may add commands: see `archiver plugins`. "
                             "Without -c, the configuration is $ARCHIVER_CONFIG, else "
                             "./archiver.yaml, else $XDG_CONFIG_HOME/archiver/archiver.yaml.")


def _version(ctx: click.Context, param, value: bool) -> None:
    """``--version``: archiver, Python and every plugin (loaded only here)."""
    if not value or ctx.resilient_parsing:
        return
    import platform
    click.echo(f"archiver {__version__}")
    click.echo(f"Python {platform.python_version()} ({platform.python_implementation()}, "
               f"{sys.executable})")
    from .errors import PluginError
    from .plugins import build_plugin_manager
    try:
        infos = build_plugin_manager().infos
    except PluginError as exc:
        click.echo(f"plugins: error: {exc}")
        ctx.exit(2)
    click.echo("plugins:")
    for info in infos.values():
        kind = "built-in" if info.builtin else "installed"
        click.echo(f"  {info.name} {info.version} ({kind}, {info.module})")
    ctx.exit()


@click.group(cls=_Cli, params=[
    click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True,
                 callback=_version, help="archiver, Python and plugin versions."),
    *shared_options()], epilog=examples(
    "archiver demo                       # try it: emulator + one run",
    "archiver config check --online      # ./archiver.yaml, the API key, every sink",
    "archiver run -v                     # one pass, with a line per job",
    "archiver ls --state incomplete"))
def cli() -> None:
    """Archive Plangrep job results and artifacts into local and cloud sinks."""


cli.add_command(run)
cli.add_command(archive)
cli.add_command(status)
cli.add_command(ls)
cli.add_command(config_group)


@cli.command(epilog=examples(
    "archiver cleanup --dry-run",
    "archiver cleanup --older-than 12h --json",
    "archiver cleanup --force              # nothing else runs on this ledger"))
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
    """Remove what dead writers left: temporary files, open multipart uploads. Needs no
    API key."""
    from .errors import ArchiverError
    from .recovery import recover_dead_writers
    if older_than is not None:
        seconds = parse_duration(older_than)
    else:
        seconds = 0.0 if force else 86400.0
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
            for item in items:  # sinks name themselves ("primary: removed ...")
                click.echo(item if item.startswith(f"{name}: ") else f"{name}: {item}")
        if dry_run:
            click.echo("(the store listing for unrecorded leftovers is skipped by --dry-run)")
        for msg in failed:
            click.echo(f"error: {msg}", err=True)
    if failed:
        sys.exit(EXIT_FATAL)


@cli.command(epilog=examples(
    "archiver worker                       # until SIGTERM",
    "archiver worker --drain --log-format json"))
@config_option
@click.option("--drain", is_flag=True, help="Stop once nothing is left to claim.")
@click.option("--jsonl", is_flag=True, help="Events on stdout, one JSON object per line "
              "(how a supervisor reads its workers).")
@click.option("--since", type=float, default=None, hidden=True)
def worker(config_file: str, drain: bool, jsonl: bool, since: float | None) -> None:
    """Claim queued jobs from the ledger, soonest expiry first, and archive them."""
    from .workers.main import main as worker_main
    sys.exit(worker_main(config_file, drain=drain, jsonl=jsonl, since=since))


@cli.command("plugins", epilog=examples("archiver plugins", "archiver plugins --json"))
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


@cli.command(epilog=examples(
    'eval "$(archiver completion bash)"                     # in ~/.bashrc',
    'eval "$(archiver completion zsh)"                      # in ~/.zshrc',
    "archiver completion fish > ~/.config/fish/completions/archiver.fish"))
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (commands, options, choices)."""
    from click.shell_completion import get_completion_class
    comp_cls = get_completion_class(shell)
    assert comp_cls is not None
    click.echo(comp_cls(cli, {}, "archiver", "_ARCHIVER_COMPLETE").source())


@cli.command(epilog=examples("archiver emulator --port 8765"))
@click.option("--port", default=8765, show_default=True)
@click.option("--no-demo", is_flag=True, help="Start empty instead of with the demo jobs.")
def emulator(port: int, no_demo: bool) -> None:
    """Run the Plangrep API emulator on 127.0.0.1 (for trying archiver out)."""
    from .testing.emulator import serve
    serve(port=port, demo=not no_demo)


@cli.command(epilog=examples("archiver demo --dir /tmp/try-archiver"))
@click.option("--dir", "directory", default=".", type=click.Path(file_okay=False),
              show_default=True, help="Where ./archive and ./.archiver go.")
def demo(directory: str) -> None:
    """Archive the emulator's demo jobs into ./archive and show where everything went."""
    from .demo import run_demo
    sys.exit(run_demo(directory))


def _debugging(argv: list[str]) -> bool:
    count = sum(a.count("v") for a in argv if a.startswith("-") and set(a[1:]) == {"v"})
    return count + 2 * argv.count("--verbose") >= 2


def main(argv: list[str] | None = None) -> None:
    """The console script: click's handling, plus one line (and a documented exit code)
    for what click would leave as a traceback or a misleading exit 1."""
    args = sys.argv[1:] if argv is None else argv
    try:
        rv = cli.main(args, prog_name="archiver", standalone_mode=False)
    except click.exceptions.Abort:  # Ctrl-C outside a pass (which handles its own)
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # `archiver ls | head`
        sys.stderr.close()
        sys.exit(141)
    except Exception as exc:
        if type(exc).__module__ == "sqlite3" and "locked" in str(exc):
            # the first write of a pass (registering the worker) waited out the busy timeout
            click.echo(f"error: the ledger is locked: another process has held its write "
                       f"lock longer than the busy timeout ({exc}); try again when it is "
                       "done", err=True)
            sys.exit(EXIT_CONFIG)
        # a bug: one line, the traceback with -vv
        if _debugging(args):
            import traceback
            traceback.print_exc()
        click.echo(f"error: internal error: {type(exc).__name__}: {exc} (a bug; -vv shows "
                   "the traceback)", err=True)
        sys.exit(EXIT_INTERNAL)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
