"""A small Python API for driving archiver from code (Airflow, Dagster, a notebook).

::

    from archiver import api

    with api.open_config("archiver.yaml") as rt:
        report = api.run(rt)                 # one pass, like `archiver run`
        report = api.archive(rt, ["job_1"])  # like `archiver archive job_1`
        print(api.status(rt)["jobs"])        # like `archiver status --json`

Every function raises :class:`archiver.errors.ArchiverError` subclasses for bad
configuration (``ConfigError``), a missing or too-new ledger (``LedgerError``) and a
refused key (reported as ``report.fatal``, ``report.exit_code == 3``); nothing here
prints or exits. Reports are :class:`archiver.executors.RunReport` (``as_dict()`` is what
``--json`` prints).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import ArchiverError
from .executors import RunReport, ThreadExecutor, run_pass
from .recovery import recover_dead_writers
from .runtime import Runtime


def open_config(config_file: str, *, require_env: bool = True,
                create: bool = True) -> Runtime:
    """The runtime of one config file; use it as a context manager (closes everything)."""
    return Runtime.open(config_file, require_env=require_env, create=create)


def run(rt: Runtime, *, job_ids: Iterable[str] | None = None, workers: int = 1,
        verbosity: int = 0) -> RunReport:
    """One pass: sink preflight, recovery of dead writers, then archive every terminal job
    not yet archived (``job_ids``: these jobs, again if need be). ``workers`` > 1 starts
    worker processes (the runtime must have been opened from a file)."""
    try:
        rt.preflight()
        recover_dead_writers(rt)
    except (ArchiverError, OSError) as exc:
        return RunReport(fatal=str(exc))
    if workers > 1 and job_ids is None:
        from .workers.fleet import run_with_workers
        return run_with_workers(rt, rt.loaded.file, workers, verbosity=verbosity)
    with ThreadExecutor(rt) as executor:
        return run_pass(rt, executor, job_ids=None if job_ids is None else list(job_ids))


def archive(rt: Runtime, job_ids: Iterable[str]) -> RunReport:
    """``archiver archive JOB...``: these jobs, re-read through the API."""
    return run(rt, job_ids=job_ids)


def status(rt: Runtime, job_id: str | None = None) -> dict[str, Any]:
    """What ``archiver status --json`` prints."""
    data = rt.ledger.summary()
    if job_id is not None:
        data["job"] = rt.ledger.job_report(job_id)
        data["events"] = rt.ledger.events(job_id)
    return data


__all__ = ["open_config", "run", "archive", "status", "Runtime", "RunReport"]
