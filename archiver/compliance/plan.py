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
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .. import keys as keymod
from ..errors import ArchiverError, AuthError, SourceError
from ..ledger import ARCHIVED, INCOMPLETE, LOST, NOTHING, WAITING, CopyRow
from ..model import Job
from .bagit import AUDIT_NAME, bag_root, manifest_name, tag_key, tagmanifest_name


class ReadOnlyLedger:
    """The ledger for a dry run: read through a read-only connection; writes raise."""

    def __init__(self, path: Path):
        self._db = None
        if path.exists():
            # mode=ro would still create -wal/-shm files; with no WAL pending the database
            # file is complete, and immutable=1 reads it without creating anything.
            pending = Path(f"{path}-wal").exists()
            mode = "mode=ro" if pending else "immutable=1"
            self._db = sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True, timeout=30)

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._db.execute(sql, args).fetchall() if self._db else []

    def job_states(self) -> dict[str, str]:
        return dict(self._rows("SELECT job_id, state FROM jobs"))

    def copies(self, job_id: str) -> dict[tuple[str, str], CopyRow]:
        rows = self._rows("SELECT job_id, path, sink, key, size, received, stored, verified"
                          " FROM copies WHERE job_id=?", (job_id,))
        return {(r[1], r[2]): CopyRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]),
                                      json.loads(r[6]), bool(r[7])) for r in rows}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def __getattr__(self, name: str):
        raise RuntimeError(f"dry run: ledger.{name}() would write to the ledger")


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


def _decision(job: Job, previous: str | None, explicit: bool) -> tuple[str, str]:
    """(action, reason) as Pipeline._triage decides, without recording anything."""
    if previous in (ARCHIVED, NOTHING, LOST) and not explicit:
        return "skip", f"already {previous}"
    if not job.terminal:
        return "wait", f"not finished ({job.status})"
    if job.has_result:
        return "archive", job.status
    if job.status == "expired" and previous in (INCOMPLETE, WAITING):
        return "lost", "expired before it was archived"
    return "nothing_to_store", job.status


def plan(pipeline, job_ids: Iterable[str] | None = None) -> PlanReport:
    """Walk the jobs like ``pipeline.run`` would; ``pipeline.ledger`` is read-only."""
    report = PlanReport()
    ledger, source = pipeline.ledger, pipeline.source
    try:
        states = ledger.job_states()
        explicit = job_ids is not None
        jobs = (source.get_job(j) for j in job_ids) if explicit else source.iter_jobs()
        for job in jobs:
            action, reason = _decision(job, states.get(job.id), explicit)
            entry: dict[str, Any] = {"job_id": job.id, "project_id": job.project_id,
                                     "status": job.status, "action": action,
                                     "reason": reason, "objects": []}
            if action == "archive":
                entry["objects"] = _objects(pipeline, job)
            report.jobs.append(entry)
    except AuthError as exc:
        report.fatal = str(exc)
    except (SourceError, ArchiverError) as exc:
        report.fatal = str(exc)
    return report


def _objects(pipeline, job: Job) -> list[dict[str, Any]]:
    result = pipeline.source.read_result(job)
    artifacts = [a for a in pipeline.source.find_artifacts(job, result)
                 if not pipeline.plugins.hook.archiver_ignore_artifact(job=job, artifact=a)]
    rel = keymod.artifact_keys(a.path for a in artifacts)
    done = pipeline.ledger.copies(job.id)
    items = [("job", "job.json", pipeline._keys(
                 job, None, keymod.job_json_key(job.project_id, job.id), False)),
             ("result", "result.json", pipeline._keys(
                 job, None, keymod.result_json_key(job.project_id, job.id), False))]
    items += [("artifact", a.path, pipeline._keys(
        job, a, keymod.artifacts_prefix(job.project_id, job.id) + rel[a.path], True))
        for a in artifacts]
    out = []
    for kind, path, keys in items:
        out.append({"kind": kind, "path": path, "sinks": {
            name: _where(pipeline.sinks[name], keys[name], (path, name) in done)
            for name in pipeline.sinks}})
    bagit = pipeline.settings.bagit
    if bagit.enabled:
        root = bag_root(job.project_id, job.id)
        names = ["bagit.txt", *(manifest_name(a) for a in bagit.algorithms), "bag-info.txt",
                 AUDIT_NAME, *(tagmanifest_name(a) for a in bagit.algorithms if a != "sha256"),
                 tagmanifest_name("sha256")]
        for name in names:
            out.append({"kind": "bag", "path": name, "sinks": {
                label: _where(sink, tag_key(root, name), None)
                for label, sink in pipeline.sinks.items()}})
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


def run_plan(loaded, plugins, job_ids, as_json: bool) -> int:
    """The ``--dry-run`` command: print the plan, return the exit code."""
    import click

    from ..pipeline import Pipeline
    # open_ledger()'s file, opened read-only (and not created when missing).
    ledger = ReadOnlyLedger(Path(loaded.settings.state_dir) / "ledger.sqlite")
    pipeline = Pipeline(loaded, plugins, ledger)
    try:
        report = plan(pipeline, job_ids)
    finally:
        pipeline.close()
        ledger.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        for line in format_plan(report):
            click.echo(line)
        if report.fatal:
            click.echo(f"error: {report.fatal}", err=True)
    return report.exit_code
