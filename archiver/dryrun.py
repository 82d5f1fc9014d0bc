"""``archiver run --dry-run`` / ``archiver archive --dry-run``: what a run would do.

Lists each job with what would happen to it and, for jobs to archive, every object (job
record, result, artifacts and the BagIt tag files) with its key in each sink, whether it
is already stored there, and the retention it would receive (``Sink.retention(key)``).

Nothing is written: the API is read (jobs, results: artifacts are not downloaded), no
sink is contacted (no preflight, which would create a probe object), and the ledger is
opened read-only, or not at all when it does not exist yet. A ledger that is asked to
write raises, so a dry run that would write fails loudly instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ArchiverError, AuthError, SourceError
from .model import Job
from .triage import ARCHIVE, decide

if TYPE_CHECKING:
    from .runtime import Runtime


@dataclass
class PlanReport:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    fatal: str | None = None

    @property
    def exit_code(self) -> int:
        return 3 if self.fatal else 0

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": True, "jobs": self.jobs, "fatal": self.fatal,
                "exit_code": self.exit_code}


def plan(rt: Runtime, job_ids: Iterable[str] | None = None) -> PlanReport:
    """Walk the jobs like a run would (the same triage); ``rt.ledger`` is read-only."""
    report = PlanReport()
    try:
        states = rt.ledger.job_states()
        explicit = job_ids is not None
        jobs = (rt.source.get_job(j) for j in job_ids) if explicit else rt.source.iter_jobs()
        for job in jobs:
            d = decide(job, states.get(job.id), explicit=explicit)
            entry: dict[str, Any] = {"job_id": job.id, "project_id": job.project_id,
                                     "status": job.status, "action": d.action,
                                     "reason": d.reason, "objects": []}
            if d.action == ARCHIVE:
                entry["objects"] = _objects(rt, job)
            report.jobs.append(entry)
    except AuthError as exc:
        report.fatal = str(exc)
    except (SourceError, ArchiverError) as exc:
        report.fatal = str(exc)
    return report


def _objects(rt: Runtime, job: Job) -> list[dict[str, Any]]:
    from .compliance.bagit import (AUDIT_NAME, NAMES_NAME, bag_root, manifest_name, tag_key,
                                   tagmanifest_name)

    items = rt.items(job, rt.source.read_result(job))
    done = rt.ledger.copies(job.id)
    out = [{"kind": it.kind, "path": it.path, "sinks": {
        name: _where(rt.sinks[name], it.keys[name], (it.path, name) in done)
        for name in rt.sinks}} for it in items]
    bagit = rt.settings.bagit
    if bagit.enabled:
        root = bag_root(job.project_id, job.id)
        # the order BagWriter writes them in (tag manifests last, sha256 last of all)
        names = ["bagit.txt", *(manifest_name(a) for a in bagit.algorithms), NAMES_NAME,
                 "bag-info.txt", AUDIT_NAME, *(tagmanifest_name(a) for a in bagit.algorithms if a != "sha256"),
                 tagmanifest_name("sha256")]
        for name in names:
            out.append({"kind": "bag", "path": name, "sinks": {
                label: _where(sink, tag_key(root, name), None)
                for label, sink in rt.sinks.items()}})
    return out


def _where(sink, key: str, stored: bool | None) -> dict[str, Any]:
    return {"key": key, "location": sink.describe(key), "stored": stored,
            "retention": sink.retention(key)}


def format_plan(report: PlanReport) -> list[str]:
    lines = []
    counts: dict[str, int] = {}
    for job in report.jobs:
        counts[job["action"]] = counts.get(job["action"], 0) + 1
        lines.append(f"job {job['job_id']} (project {job['project_id']}): {job['action']}"
                     f" ({job['reason']})")
        for obj in job["objects"]:
            lines.append(f"  {obj['kind']} {obj['path']!r}")
            for name, where in obj["sinks"].items():
                state = " [already stored]" if where["stored"] else ""
                lines.append(f"    {name}: {where['location']}{state}; retention: "
                             f"{_retention_text(where['retention'])}")
    summary = ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "no jobs"
    lines.append(f"dry run: nothing was written ({summary})")
    return lines


def _retention_text(retention: dict | None) -> str:
    if not retention:
        return "none"
    return ", ".join(f"{k}={v}" for k, v in retention.items())


def run_plan(config_file: str, job_ids, as_json: bool) -> int:
    """The ``--dry-run`` command: print the plan, return the exit code."""
    import click

    from .commands import open_runtime
    # The ledger read-only, and not created when missing.
    rt = open_runtime(config_file, read_only=True)
    try:
        report = plan(rt, job_ids)
    finally:
        rt.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        for line in format_plan(report):
            click.echo(line)
        if report.fatal:
            click.echo(f"error: {report.fatal}", err=True)
    return report.exit_code
