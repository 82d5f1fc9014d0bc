"""Replication and backfill (``archiver replicate --from A --to B``): copy archived jobs,
payload and bag, from one sink to another without the Plangrep API.

The source's bag says what a job is: its ``tagmanifest-sha256.txt`` vouches for the tag
files, ``manifest-*.txt`` for every payload file. Each payload object is streamed from
the source into the target's ordinary writer (so the target applies its own retention,
checksums and no-overwrite rule) while its digests are computed, and is committed only
if they match the manifest; the tag files follow once every payload object is in place,
``tagmanifest-sha256.txt`` last, byte for byte, so the target's bag is the source's bag.
A source job without a bag is copied from the ledger's record of it and gets a bag of
its own in the target.

Idempotent: objects already in the target with the same sha256 are skipped. A key that
holds different bytes is a conflict: reported, the target's object left untouched, and
that job gets no tag files in the target. Every copy is recorded in the ledger (and so in
the audit chain) like a copy made by ``archiver run``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from .. import keys as keymod
from ..components import Sink
from ..errors import ArchiverError, ConflictError
from ..ledger import ARCHIVED, CopyRow
from . import storage
from .bagit import (
    SUPPORTED,
    BagWriter,
    JobRef,
    bag_root,
    manifest_name,
    parse_manifest,
    tag_key,
    tagmanifest_name,
)

log = logging.getLogger("archiver.compliance.replicate")
_TAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}")


class JobFailed(ArchiverError):
    """This job cannot be replicated now; the message says why."""


@dataclass
class ReplicationReport:
    jobs: list[str] = field(default_factory=list)         # complete in the target
    jobs_copied: list[str] = field(default_factory=list)  # ... of which this run copied to
    copied: int = 0
    skipped: int = 0
    bytes: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)
    fatal: str | None = None

    @property
    def exit_code(self) -> int:
        return 3 if self.fatal else (1 if self.problems else 0)

    def as_dict(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "jobs_copied": self.jobs_copied,
                "jobs_already_there": [j for j in self.jobs if j not in self.jobs_copied],
                "copied": self.copied, "skipped": self.skipped,
                "bytes": self.bytes, "problems": self.problems, "fatal": self.fatal,
                "exit_code": self.exit_code}


@dataclass
class _Source:
    """What is to be copied for one job: payload digests and the bag's tag files."""

    payload: dict[str, dict[str, str]]     # relpath -> digests
    tags: dict[str, bytes]                 # tag file name -> bytes ({} when no bag)


class Replicator:
    """``on_progress`` (set it before :meth:`run`): progress events as ``archiver run``
    makes them (``total``, ``bytes``, ``artifact``), for a display."""

    on_progress = None

    def __init__(self, ledger, sinks: dict[str, Sink], bagit_settings):
        self.ledger, self.sinks, self.bagit = ledger, sinks, bagit_settings
        self.report = ReplicationReport()

    def run(self, src: str, dst: str, job_ids: list[str] | None = None) -> ReplicationReport:
        source, target = self.sinks[src], self.sinks[dst]
        try:
            target.preflight()
        except ArchiverError as exc:
            self.report.fatal = f"sink {dst}: {exc}"
            return self.report
        jobs = self._jobs(src, job_ids)
        if self.on_progress is not None:
            wanted = {j.id for j in jobs}
            self.on_progress("total", {"bytes": sum(
                r.size or 0 for r in self.ledger.copy_rows(sink=src) if r.job_id in wanted)})
        for job in jobs:
            try:
                before = self.report.copied
                self._job(source, target, job)
                self.report.jobs.append(job.id)
                if self.report.copied > before:
                    self.report.jobs_copied.append(job.id)
            except JobFailed as exc:
                self._problem(job.id, str(exc))
                self.ledger.event("failed", f"replication from sink {src}: {exc}",
                                  job_id=job.id, sink=dst)
        return self.report

    def _problem(self, job_id: str, message: str) -> None:
        log.info("job %s: %s", job_id, message)
        self.report.problems.setdefault(job_id, []).append(message)

    def _jobs(self, src: str, job_ids: list[str] | None) -> list[JobRef]:
        rows = {r.job_id: r for r in self.ledger.job_rows()}
        if job_ids:
            out = []
            for job_id in job_ids:
                if job_id not in rows:
                    self._problem(job_id, f"job {job_id} is not in the ledger")
                else:
                    out.append(JobRef(job_id, rows[job_id].project_id, rows[job_id].status))
            return out
        with_copies = {r.job_id for r in self.ledger.copy_rows(sink=src)}
        return [JobRef(j, rows[j].project_id, rows[j].status) for j in sorted(with_copies)
                if j in rows and rows[j].state == ARCHIVED]

    # ------------------------------------------------------------------ one job
    def _job(self, source: Sink, target: Sink, job: JobRef) -> None:
        root = bag_root(job.project_id, job.id)
        src_rows = {r.key: r for r in self.ledger.copy_rows(sink=source.label, job_id=job.id)}
        plan = self._read_source(source, job, root, src_rows)
        conflicts = []
        for rel, digests in sorted(plan.payload.items()):
            key = f"{root}/{rel}"
            row = src_rows.get(key)
            try:
                self._copy(source, target, job, key, row.path if row else rel, digests,
                           row.received if row else digests)
            except ConflictError as exc:
                conflicts.append(str(exc))
                self.ledger.event("conflict", str(exc), job_id=job.id, sink=target.label,
                                  path=row.path if row else rel)
            except (ArchiverError, OSError) as exc:
                raise JobFailed(f"copying {source.describe(key)} to sink {target.label}: "
                                f"{exc}") from exc
        if conflicts:
            raise JobFailed(f"{len(conflicts)} conflict(s) in sink {target.label}, the stored "
                            f"objects were left untouched and no tag files were copied: "
                            + "; ".join(conflicts))
        try:
            if plan.tags:
                self._copy_tags(target, job, root, plan.tags)
            elif self.bagit.enabled:
                BagWriter(self.ledger, self.bagit).write(target, job)
        except ConflictError as exc:
            raise JobFailed(f"sink {target.label}: a different bag is already there ({exc}); "
                            "it was left untouched") from exc
        except (ArchiverError, OSError) as exc:
            raise JobFailed(f"writing the bag to sink {target.label}: {exc}") from exc
        self.ledger.event("replicated", f"job copied from sink {source.label} to sink "
                                        f"{target.label}", job_id=job.id, sink=target.label,
                          data={"from": source.label, "objects": len(plan.payload),
                                "bag": bool(plan.tags)})

    def _read_source(self, source: Sink, job: JobRef, root: str,
                     src_rows: dict[str, CopyRow]) -> _Source:
        """The source bag, checked against itself and the ledger, or the ledger's copies."""
        top = tagmanifest_name("sha256")
        try:
            raw = storage.read_small(source, tag_key(root, top))
            if raw is None:
                if not src_rows:
                    raise JobFailed(f"sink {source.label} has no bag and the ledger no copies "
                                    f"of job {job.id}")
                return _Source({k[len(root) + 1:]: r.stored for k, r in src_rows.items()}, {})
            tags = {top: raw}
            for name, digest in parse_manifest(raw, source.describe(tag_key(root, top))).items():
                if not _TAG_NAME.fullmatch(name):
                    raise JobFailed(f"source bag of job {job.id} lists an unexpected tag file "
                                    f"{name!r}")
                data = storage.read_small(source, tag_key(root, name))
                if data is None or hashlib.sha256(data).hexdigest() != digest:
                    raise JobFailed(f"source bag is damaged: {source.describe(tag_key(root, name))}"
                                    f" is {'missing' if data is None else 'altered'}; run "
                                    f"'archiver verify --sink {source.label}'")
                tags[name] = data
            for name in list(tags):  # the other tagmanifests are not listed in this one
                if name.startswith("tagmanifest-") and name != top:
                    tags.pop(name)
            for alg in self.bagit.algorithms:
                if alg != "sha256" and manifest_name(alg) in tags:
                    extra = storage.read_small(source, tag_key(root, tagmanifest_name(alg)))
                    if extra is not None:
                        tags[tagmanifest_name(alg)] = extra
        except ArchiverError as exc:
            if isinstance(exc, JobFailed):
                raise
            raise JobFailed(f"reading the bag from sink {source.label}: {exc}") from exc
        payload: dict[str, dict[str, str]] = {}
        for name, data in tags.items():
            if name.startswith("manifest-") and name.endswith(".txt") \
                    and name[9:-4] in SUPPORTED:
                alg = name[9:-4]
                for rel, digest in parse_manifest(data, name).items():
                    payload.setdefault(rel, {})[alg] = digest
        if "sha256" not in {a for d in payload.values() for a in d} and payload:
            raise JobFailed(f"source bag of job {job.id} has no manifest-sha256.txt")
        for rel in payload:  # the source bag is data: its paths must stay in the job's data/
            if not (rel.startswith("data/") and keymod.is_safe_key(f"{root}/{rel}")):
                raise JobFailed(f"source bag of job {job.id} lists an unsafe path {rel!r}")
        for key, row in src_rows.items():
            rel = key[len(root) + 1:]
            if payload.get(rel, {}).get("sha256") != row.stored.get("sha256"):
                raise JobFailed(f"the source bag and the ledger disagree about "
                                f"{source.describe(key)}; run 'archiver verify --sink "
                                f"{source.label}'")
        return _Source(payload, tags)

    def _copy(self, source: Sink, target: Sink, job: JobRef, key: str, path: str,
              digests: dict[str, str], received: dict[str, str]) -> None:
        existing = target.stat(key)
        if existing is not None and existing.digests.get("sha256"):
            if existing.digests["sha256"] != digests["sha256"]:
                raise ConflictError(f"sink {target.label!r}: {target.describe(key)} already "
                                    f"holds different bytes (sha256 "
                                    f"{existing.digests['sha256']}, source {digests['sha256']})")
            self.report.skipped += 1
            if (path, target.label) not in self.ledger.copies(job.id):
                existing.existed = True
                existing.digests = {**digests, **existing.digests}
                self._record(job, path, existing, received, source)
            return
        from ..progress import metered
        with source.open_read(key) as chunks:
            stored = storage.put_stream(target, self.ledger, key,
                                        metered(chunks, self.on_progress, job.id, key,
                                                None), job_id=job.id, path=path,
                                        expect=digests)
        if self.on_progress is not None:
            self.on_progress("artifact", {"job": job.id, "path": key, "ok": True,
                                          "size": stored.size})
        self.report.copied += 0 if stored.existed else 1
        self.report.bytes += stored.size
        self._record(job, path, stored, received, source)

    def _record(self, job: JobRef, path: str, stored, received: dict, source: Sink) -> None:
        self.ledger.record_copy(job.id, path, stored, received=received,
                                chain=[{"transform": "replicate", "from": source.label,
                                        "measures": "stored"}], verified=True)

    def _copy_tags(self, target: Sink, job: JobRef, root: str, tags: dict[str, bytes]) -> None:
        def order(name: str) -> tuple[int, str]:
            if name == tagmanifest_name("sha256"):
                return 2, name
            return (1 if name.startswith("tagmanifest-") else 0), name

        for name in sorted(tags, key=order):
            stored = storage.put_bytes(target, self.ledger, tag_key(root, name), tags[name],
                                       job_id=job.id, path=f"bag:{name}",
                                       algorithms=self.bagit.algorithms)
            self.ledger.record_bag_file(job.id, target.label, name, stored.key, stored.size,
                                        dict(stored.digests))
