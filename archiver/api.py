"""A small Python API for driving archiver from code (Airflow, Dagster, a notebook).

::

    from archiver import api

    with api.open_config("archiver.yaml") as rt:  # None: $ARCHIVER_CONFIG, ./archiver.yaml ...
        report = api.run(rt)                 # one pass, like `archiver run`
        report = api.archive(rt, ["job_1"])  # like `archiver archive job_1`
        print(api.status(rt)["jobs"])        # like `archiver status --json`
        rows = api.jobs(rt, states=["incomplete"])  # like `archiver ls --json`
        if report.exit_code:                 # the exit code the command line would give
            raise RuntimeError(report.as_dict())

Nothing here prints or exits, nor configures logging (archiver logs to the ``archiver``
logger; your framework's handlers decide). Errors: :class:`archiver.errors.ConfigError`
for a bad configuration (also :class:`archiver.discovery.NoConfig` when there is none to
find), :class:`archiver.errors.LedgerError` for a missing (``create=False``) or too-new
ledger, ``OSError`` / ``sqlite3.Error`` for a state_dir that cannot be used. A refused
key, an unreachable API or a failing sink is not raised: it is ``report.fatal`` with
``report.exit_code == 3``. Reports are :class:`archiver.executors.RunReport`
(``as_dict()`` is what ``--json`` prints; ``exit_code`` follows docs/cli.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Callable

from .errors import ArchiverError
from .executors import RunReport, ThreadExecutor, run_pass
from .recovery import recover_dead_writers
from .runtime import Runtime


def open_config(config_file: str | None = None, *, require_env: bool = True,
                create: bool = True,
                on_progress: Callable[[str, dict[str, Any]], None] | None = None) -> Runtime:
    """The runtime of one config file (None: found as the command line finds it); use it
    as a context manager (closes everything). ``on_progress`` receives the progress
    events (docs/cli.md, "Python API")."""
    from .discovery import find_config
    path, _origin = find_config(config_file)
    return Runtime.open(path, require_env=require_env, create=create,
                        on_progress=on_progress)


def run(rt: Runtime, *, job_ids: Iterable[str] | None = None, workers: int = 1,
        verbosity: int = 0) -> RunReport:
    """One pass: sink preflight, recovery of dead writers, then archive every terminal job
    not yet archived (``job_ids``: these jobs, again if need be). ``workers`` > 1 starts
    worker processes (the runtime must have been opened from a file)."""
    started = time.monotonic()
    report = _run(rt, job_ids, workers, verbosity)
    report.elapsed = time.monotonic() - started
    return report


def _run(rt: Runtime, job_ids: Iterable[str] | None, workers: int,
         verbosity: int) -> RunReport:
    try:
        rt.preflight()
        recover_dead_writers(rt)
    except (ArchiverError, OSError) as exc:
        return RunReport(fatal=str(exc))
    if workers > 1 and job_ids is None:
        from .workers.fleet import run_with_workers
        report = run_with_workers(rt, rt.loaded.file, workers, verbosity=verbosity)
    else:
        with ThreadExecutor(rt) as executor:
            report = run_pass(rt, executor, job_ids=None if job_ids is None else list(job_ids))
    if not report.auth_refused:
        from .jobwork import warn_expiring
        warn_expiring(rt)  # as watch does: open jobs close to their expiry
    return report


def archive(rt: Runtime, job_ids: Iterable[str]) -> RunReport:
    """``archiver archive JOB...``: these jobs, re-read through the API. An id the API
    does not know is ``report.unknown`` (exit code 5); the others are archived."""
    return run(rt, job_ids=job_ids)


def status(rt: Runtime, job_id: str | None = None) -> dict[str, Any]:
    """What ``archiver status --json`` prints (``job`` is None for a job the ledger does
    not know)."""
    from .reports import status_document
    return status_document(rt.ledger, job_id)


def jobs(rt: Runtime, *, states: list[str] | None = None, projects: list[str] | None = None,
         sinks: list[str] | None = None,
         expiring_within: float | None = None) -> list[dict[str, Any]]:
    """What ``archiver ls --json`` prints: every job of the ledger, filtered."""
    from .reports import job_listing
    return job_listing(rt.ledger, states=states, projects=projects, sinks=sinks,
                       expiring_within=expiring_within)


__all__ = ["open_config", "run", "archive", "status", "jobs", "Runtime", "RunReport"]
