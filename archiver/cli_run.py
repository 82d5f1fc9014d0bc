"""``archiver run`` and ``archiver archive``: one pass, its progress and its summary."""

from __future__ import annotations

import json
import os
import sys

import click

from .commands import (
    config_option,
    examples,
    json_option,
    open_runtime,
    quiet,
    show_progress,
    stop_signals,
    verbosity,
)

# What a skipped job had already been, in words (RunReport.already's keys).
_ALREADY = {"archived": "archived", "nothing_to_store": "with nothing to store",
            "lost": "lost", "settled meanwhile": "settled meanwhile by another worker"}


def run_pass(config_file: str, job_ids, as_json: bool, dry_run: bool = False,
             workers: int | None = None) -> None:
    """The body of ``run`` and ``archive``: exits with the report's code."""
    from .progress import ENV, Progress
    if dry_run:
        from .dryrun import run_plan
        sys.exit(run_plan(config_file, job_ids, as_json))
    progress = Progress(show_progress(as_json))
    rt = open_runtime(config_file, on_progress=progress.callback)
    n = workers if workers is not None else rt.settings.workers
    # workers send the bytes in flight only to a supervisor that shows them
    hush = not progress.enabled and n > 1 and ENV not in os.environ
    if hush:
        os.environ[ENV] = "0"
    try:
        with progress:
            report = _pass(rt, job_ids, n)
    finally:
        rt.close()
        if hush:
            os.environ.pop(ENV, None)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        print_report(report)
    sys.exit(report.exit_code)


def _pass(rt, job_ids, n: int):
    """Preflight, recovery of dead writers, then one pass in this process or with ``n``
    worker processes; SIGINT/SIGTERM abort in-flight writers (nothing partial kept)."""
    from .api import run
    with stop_signals(rt):
        return run(rt, job_ids=job_ids, workers=n, verbosity=verbosity())


def summary(report) -> str:
    """The one line a pass ends with: what it did, in how long, and what it found
    already done (each count says what it counts)."""
    from .humanize import duration, rate, size
    line = f"archived {len(report.archived)} job(s)"
    if report.objects_written or report.bytes_received:
        line += (f": {report.objects_written} object(s) written, "
                 f"{size(report.bytes_received)} received")
    line += f" in {duration(report.elapsed)}"
    speed = rate(report.bytes_received, report.elapsed)
    if speed and report.bytes_received >= 1 << 20:
        line += f" ({speed})"
    parts = []
    if report.nothing_to_store:
        parts.append(f"{len(report.nothing_to_store)} with nothing to store")
    if report.waiting:
        parts.append(f"{len(report.waiting)} not finished yet")
    for what, n in (("incomplete", len(report.incomplete)), ("lost", len(report.lost)),
                    ("unknown to the API", len(report.unknown)),
                    ("busy elsewhere", len(report.busy)), ("parked", len(report.parked)),
                    ("backing off", len(report.backoff))):
        if n:
            parts.append(f"{n} {what}")
    already = [f"{n} {_ALREADY.get(state, state)}"
               for state, n in sorted(report.already.items())]
    if already:
        parts.append("already settled: " + ", ".join(already))
    return line + ("; " + "; ".join(parts) if parts else "")


def _tidy(job_id: str, problem: str) -> str:
    """``path: job J artifact 'path': text`` -> ``path: text`` (the job is in the
    heading, the path in front)."""
    path, sep, rest = problem.partition(": ")
    if not sep:
        return problem
    for kind in ("artifact", "job", "result"):
        tag = f"job {job_id} {kind} {path!r}"
        rest = rest.replace(tag + ": ", "").replace(tag + " ", "")
    return f"{path}: {rest}"


def print_report(report) -> None:
    if not quiet():
        click.echo(summary(report))
    for job_id, holder in sorted(report.busy.items()):
        click.echo(f"BUSY {job_id}: {holder}; not touched by this run", err=True)
    for job_id, why in sorted(report.parked.items()):
        click.echo(f"PARKED {job_id}: {why}", err=True)
    for job_id, problems in sorted(report.incomplete.items()):
        click.echo(f"INCOMPLETE {job_id}:", err=True)
        for p in problems:
            click.echo(f"  {_tidy(job_id, p)}", err=True)
    for job_id, msg in sorted(report.lost.items()):
        click.echo(f"LOST {job_id}: {msg}", err=True)
    for job_id, msg in sorted(report.unknown.items()):
        click.echo(f"UNKNOWN {job_id}: {msg}", err=True)
    if report.fatal:
        click.echo(f"error: {report.fatal}", err=True)
    if report.interrupted:
        click.echo("interrupted: nothing partial was left; rerun to finish", err=True)


dry_run_option = click.option("--dry-run", is_flag=True, help="List each job and object, "
                              "its key and retention in each sink; write nothing.")
workers_option = click.option("--workers", type=click.IntRange(min=1, max=64), default=None,
                              help="Worker processes (default: workers: in the config, 1).")


@click.command(epilog=examples(
    "archiver run                          # ./archiver.yaml",
    "archiver run -c prod.yaml --workers 4",
    "archiver run --dry-run                # what would be stored where",
    "archiver run --json | jq .exit_code"))
@config_option
@json_option
@dry_run_option
@workers_option
def run(config_file: str, as_json: bool, dry_run: bool, workers: int | None) -> None:
    """One pass over every terminal job not yet archived."""
    run_pass(config_file, None, as_json, dry_run, workers)


@click.command(epilog=examples(
    "archiver archive job_123 job_456",
    "archiver archive -c prod.yaml --json job_123"))
@config_option
@json_option
@dry_run_option
@click.argument("job_ids", nargs=-1, required=True)
def archive(config_file: str, as_json: bool, dry_run: bool, job_ids) -> None:
    """Archive the given jobs (again, if needed: stored copies are skipped).

    An id the API does not know is reported as UNKNOWN (exit 5) and the other jobs are
    archived all the same."""
    run_pass(config_file, list(job_ids), as_json, dry_run)


__all__ = ["archive", "print_report", "run", "run_pass", "summary"]
