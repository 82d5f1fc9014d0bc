"""Built-in plugin: the compliance commands, added through ``archiver_register_commands``.

* ``archiver verify``: fixity audit of stored objects against the ledger and the bags;
* ``archiver audit verify``: the hash chain of the ledger's audit log and of every
  exported ``audit.jsonl``;
* ``archiver replicate``: copy archived jobs (payload and bag) from one sink to another,
  without the Plangrep API;
* ``archiver repair``: restore what ``verify`` finds altered or missing, from another sink
  or the API.

Exit codes: 0 all good; 1 a problem was found (tampering, conflict) or remains after
repair; 2 bad configuration or usage; 3 a sink could not be read or written; 5 (repair)
a ``--job`` the ledger does not know. BagIt writing itself is done by the
pipeline (``archiver.compliance.bagit``), and ``run --dry-run`` by the core CLI.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone

import click

from ..commands import config_option, examples, json_option, show_progress
from ..hookspecs import hookimpl


@contextmanager
def _runtime(config_file: str):
    """The runtime, closed afterwards."""
    from ..commands import open_runtime
    # These commands need the Plangrep API at most for repair: an unset
    # ${PLANGREP_API_KEY} is fine (repair then names the API as refusing).
    # They read what was archived: a missing ledger is the wrong directory, not a new one.
    rt = open_runtime(config_file, require_env=False, create=False)
    try:
        yield rt
    finally:
        rt.close()


@contextmanager
def _opened(config_file: str):
    """(loaded config, ledger, sinks by name); everything closed afterwards."""
    with _runtime(config_file) as rt:
        yield rt.loaded, rt.ledger, rt.sinks


def _usage(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _known(sinks: dict, names, option: str) -> None:
    for name in names:
        if name not in sinks:
            _usage(f"{option} {name}: no sink of that name in the configuration "
                   f"(configured: {', '.join(sinks)})")


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        _usage(f"--since {text!r}: not a date (YYYY-MM-DD or an ISO 8601 date and time)")
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _budget(text: str | None) -> int | None:
    if text is None:
        return None
    from pydantic import ByteSize, TypeAdapter, ValidationError
    try:
        value = TypeAdapter(ByteSize).validate_python(text)
    except ValidationError:
        _usage(f"--bytes {text!r}: not a size (e.g. 500MiB, 10GiB, 1000000)")
    if value <= 0:
        _usage("--bytes must be positive")
    return int(value)


@click.command(epilog=examples(
    "archiver verify                          # every copy in every sink",
    "archiver verify --sink offsite --sample 5",
    "archiver verify --bytes 10GiB --json"))
@config_option
@click.option("--sink", "sink_names", multiple=True, help="Only this sink (repeatable).")
@click.option("--sample", type=click.FloatRange(0, 100, min_open=True), metavar="PERCENT",
              help="Check this share of the objects, least recently checked first.")
@click.option("--bytes", "budget", metavar="BUDGET",
              help="Check objects up to this many bytes, least recently checked first.")
@click.option("--since", metavar="DATE", help="Only objects stored on or after DATE.")
@json_option
def verify(config_file, sink_names, sample, budget, since, as_json) -> None:
    """Re-read stored objects and compare them with the ledger and the bag manifests."""
    from ..compliance.fixity import Auditor
    from ..progress import Progress
    if sample is not None and budget is not None:
        _usage("give --sample or --bytes, not both")
    limit, start = _budget(budget), _since(since)
    with _opened(config_file) as (_loaded, ledger, sinks):
        _known(sinks, sink_names, "--sink")
        auditor = Auditor(ledger, sinks)
        progress = Progress(show_progress(as_json), "verifying")
        auditor.on_progress = progress.callback
        with progress:
            report = auditor.run(list(sink_names) or None, sample=sample, budget=limit,
                                 since=start)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for finding in report.findings:
            click.echo(str(finding), err=True)
        for note in report.notes:
            click.echo(f"note: {note}", err=True)
        from ..humanize import size
        verdict = "OK" if not report.findings else f"FAILED: {len(report.findings)} problem(s)"
        click.echo(f"checked {report.checked} of {report.objects} object(s), "
                   f"{size(report.bytes)}: {verdict}")
    sys.exit(report.exit_code)


@click.group("audit", epilog=examples("archiver audit verify"))
def audit_group() -> None:
    """The tamper-evident audit log."""


@audit_group.command("verify", epilog=examples(
    "archiver audit verify",
    "archiver audit verify --job job_123 --file ./audit.jsonl"))
@config_option
@click.option("--job", "job_id", help="Only this job's exported audit logs.")
@click.option("--file", "files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Also check this exported audit.jsonl (repeatable).")
@click.option("--no-exports", is_flag=True, help="Do not read audit.jsonl back from sinks.")
@json_option
def audit_verify(config_file, job_id, files, no_exports, as_json) -> None:
    """Check the hash chain of the ledger and of the exported audit.jsonl files; name the
    first broken record."""
    from ..compliance.audit import check_audit
    with _opened(config_file) as (_loaded, ledger, sinks):
        report = check_audit(ledger, sinks, job_id=job_id, files=files,
                             exports=not no_exports)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for item in report.checked:
            if item["broken"]:
                click.echo(f"BROKEN {item['broken']}", err=True)
            else:
                click.echo(f"ok {item['where']}: {item['records']} record(s)")
        for problem in report.problems:
            click.echo(f"error: {problem}", err=True)
    sys.exit(report.exit_code)


@click.command(epilog=examples(
    "archiver replicate --from primary --to offsite",
    "archiver replicate --from primary --to offsite --job job_123 --json"))
@config_option
@click.option("--from", "src", required=True, help="Sink to copy from.")
@click.option("--to", "dst", required=True, help="Sink to copy to.")
@click.option("--job", "job_ids", multiple=True, help="Only this job (repeatable).")
@json_option
def replicate(config_file, src, dst, job_ids, as_json) -> None:
    """Copy archived jobs (payload and bag) from one sink to another, without the API."""
    from ..compliance.replicate import Replicator
    from ..humanize import duration, size
    from ..progress import Progress
    if src == dst:
        _usage("--from and --to name the same sink")
    started = time.monotonic()
    with _opened(config_file) as (loaded, ledger, sinks):
        _known(sinks, [src], "--from")
        _known(sinks, [dst], "--to")
        replicator = Replicator(ledger, sinks, loaded.settings.bagit)
        progress = Progress(show_progress(as_json), "replicating")
        replicator.on_progress = progress.callback
        with progress:
            report = replicator.run(src, dst, list(job_ids) or None)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        copied_to = len(report.jobs_copied)
        click.echo(f"{src} -> {dst}: {len(report.jobs)} job(s) complete in {dst} "
                   f"({copied_to} copied now, {len(report.jobs) - copied_to} already "
                   f"there); {report.copied} object(s) copied ({size(report.bytes)}), "
                   f"{report.skipped} already there, in "
                   f"{duration(time.monotonic() - started)}")
        for job_id, problems in sorted(report.problems.items()):
            for problem in problems:
                click.echo(f"FAILED {job_id}: {problem}", err=True)
        if report.fatal:
            click.echo(f"error: {report.fatal}", err=True)
    sys.exit(report.exit_code)


@click.command(epilog=examples(
    "archiver repair --dry-run                # what would be restored, from where",
    "archiver repair --sink offsite",
    "archiver repair --job job_123 --json"))
@config_option
@click.option("--sink", "sink_names", multiple=True, help="Only repair this sink (repeatable);"
              " every sink may serve as a source.")
@click.option("--job", "job_ids", multiple=True, help="Only this job (repeatable).")
@click.option("--dry-run", is_flag=True, help="Report what would be restored and from where;"
              " write nothing.")
@json_option
def repair(config_file, sink_names, job_ids, dry_run, as_json) -> None:
    """Restore objects verify finds altered or missing, from another sink or the API."""
    from ..commands import EXIT_UNKNOWN_JOB
    from ..compliance.repair import Repairer
    from ..progress import Progress
    with _runtime(config_file) as rt:
        _known(rt.sinks, sink_names, "--sink")
        known = {r.job_id for r in rt.ledger.job_rows()}
        for job_id in job_ids:
            if job_id not in known:
                click.echo(f"error: --job {job_id}: no job of that id in the ledger", err=True)
                sys.exit(EXIT_UNKNOWN_JOB)
        repairer = Repairer(rt, dry_run=dry_run)
        progress = Progress(show_progress(as_json), "checking")
        repairer.on_progress = progress.callback
        with progress:
            report = repairer.run(list(sink_names) or None, list(job_ids) or None)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        sys.exit(report.exit_code)
    for item in report.repairs:
        click.echo(str(item), err=item.outcome == "not repaired")
    for finding in report.remaining:
        click.echo(f"{finding} (not repaired)", err=True)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    done = sum(r.outcome == "repaired" for r in report.repairs)
    if not report.repairs and not report.remaining:
        click.echo("nothing to repair: every object checked is as the ledger recorded")
    elif dry_run:
        would = sum(r.outcome == "would repair" for r in report.repairs)
        click.echo(f"dry run: {would} of {len(report.repairs)} object(s) would be repaired; "
                   "nothing was written")
    else:
        left = len(report.repairs) - done + len(report.remaining)
        click.echo(f"repaired {done} of {len(report.repairs)} object(s)"
                   + (f"; {left} problem(s) remain" if left else "; verify now passes"))
    sys.exit(report.exit_code)


@hookimpl
def archiver_register_commands(cli) -> None:
    for command in (verify, audit_group, replicate, repair):
        cli.add_command(command)
