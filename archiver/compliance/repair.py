"""Repair (``archiver repair``): restore what a fixity audit finds altered or missing.

The audit is :class:`~archiver.compliance.fixity.Auditor`'s, over the sinks to repair
(``--sink``) and jobs (``--job``). Each payload object it names ``altered`` or
``missing``, and each tag file whose bytes are gone or differ from what the ledger
recorded when the bag was written, is restored from the first good source:

1. another configured sink holding a copy the ledger records with the same stored
   sha256 (tag files: the same recorded tag file);
2. the Plangrep API, while the job has not expired there: the object is downloaded and
   passed through the sink's transform chain, as ``archiver run`` stores it.

The bytes are streamed into the damaged sink's writer with their digests computed on the
way (:func:`archiver.compliance.storage.put_stream`) and committed only if every digest
the ledger recorded matches; otherwise the writer is aborted, nothing is visible, and the
next source is tried. A missing object is written by the sink's ordinary writer. An
altered one needs :meth:`Sink.open_repair_writer`, which keeps the damaged bytes (local:
moved to a quarantine directory; S3/GCS: an older version of the object) and refuses,
saying what an operator must do, where it cannot. Every repair is recorded in the ledger
(the copy again, and a ``repaired`` event naming sink, key, source and where the damaged
bytes are kept) and so in the audit chain. Finally the repaired jobs are audited again in
the sinks that were repaired, so the report (and exit code) says what ``archiver verify``
would now say.

``dry_run``: the audit records nothing, no sink is written; each object is reported with
the source that would be tried first.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..components import Sink
from ..errors import ArchiverError, ConflictError
from ..humanize import parse_iso
from . import storage
from .fixity import Auditor
from .fixity_report import Finding

log = logging.getLogger("archiver.compliance.repair")

API = "the Plangrep API"
REPAIRED, WOULD_REPAIR, FAILED = "repaired", "would repair", "not repaired"


@dataclass
class Repair:
    """One damaged object or tag file and what repair did about it."""

    kind: str                 # what the audit found: altered | missing
    sink: str
    job_id: str
    path: str                 # ledger path, or ``bag:<name>`` for a tag file
    key: str
    where: str
    outcome: str = FAILED
    source: str | None = None  # "sink NAME" or the API
    kept: str | None = None    # where the damaged bytes are kept (quarantine, version)
    detail: str = ""
    expect: dict[str, str] = field(default_factory=dict, repr=False)
    received: dict[str, str] = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        head = f"{self.outcome.upper()} sink {self.sink} job {self.job_id}: {self.where}"
        if self.outcome == FAILED:
            return f"{head}: {self.kind}: {self.detail}"
        kept = f"; the damaged bytes are kept at {self.kept}" if self.kept else ""
        return f"{head}: {self.kind}, from {self.source}{kept}"

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("kind", "sink", "job_id", "path", "key",
                                              "where", "outcome", "source", "kept",
                                              "detail")}


@dataclass
class RepairReport:
    dry_run: bool = False
    repairs: list[Repair] = field(default_factory=list)
    remaining: list[Finding] = field(default_factory=list)  # problems repair leaves
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if any(f.kind in ("unreachable", "unchecked") for f in self.remaining):
            return 3
        if self.remaining or any(r.outcome != REPAIRED for r in self.repairs):
            return 1
        return 0

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "repairs": [r.as_dict() for r in self.repairs],
                "repaired": sum(r.outcome == REPAIRED for r in self.repairs),
                "remaining": [vars(f) for f in self.remaining], "notes": self.notes,
                "exit_code": self.exit_code}


class _SourceFailed(ArchiverError):
    """Reading the source failed (not the target): the next source is tried."""


class _Replacing:
    """A sink as :func:`storage.put_stream` sees it when repairing an altered object:
    its writers are the sink's repair writers (:meth:`Sink.open_repair_writer`)."""

    def __init__(self, sink: Sink):
        self._sink = sink

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sink, name)

    def open_writer(self, key: str, metadata: dict[str, str] | None = None):
        return self._sink.open_repair_writer(key, metadata)


def can_replace(sink: Sink) -> bool:
    return type(sink).open_repair_writer is not Sink.open_repair_writer


class Repairer:
    """Repairs one configured archiver (``rt``: an :class:`archiver.runtime.Runtime`)."""

    on_progress = None

    def __init__(self, rt, *, dry_run: bool = False):
        self.rt, self.ledger, self.sinks = rt, rt.ledger, rt.sinks
        self.report = RepairReport(dry_run=dry_run)
        self._jobs: dict[str, Any] = {}  # job id -> (job, items) from the API, or why not

    def run(self, sink_names: list[str] | None = None,
            job_ids: list[str] | None = None) -> RepairReport:
        auditor = Auditor(self.ledger, self.sinks, record=not self.report.dry_run)
        auditor.on_progress = self.on_progress
        audit = auditor.run(sink_names, jobs=job_ids)
        self.report.notes = audit.notes
        targets, seen = [], set()
        for finding in audit.findings:
            target = self._target(finding)
            if target is None or (target.sink, target.key) in seen:
                if target is None:
                    self.report.remaining.append(finding)
                continue
            seen.add((target.sink, target.key))
            targets.append(target)
        damaged = {(t.job_id, t.path, t.sink) for t in targets}
        for target in targets:
            self._repair(target, damaged)
            log.info("%s", target)
            self.report.repairs.append(target)
        if not self.report.dry_run:
            self._reaudit()
        return self.report

    # ------------------------------------------------------------------ what to repair
    def _target(self, f: Finding) -> Repair | None:
        if f.kind in ("altered", "missing") and f.key and f.path:
            row = self.ledger.copies(f.job_id).get((f.path, f.sink))
            if row is None:
                return None
            return Repair(f.kind, f.sink, f.job_id, f.path, f.key, f.where,
                          expect=_hashable(row.stored), received=dict(row.received))
        if f.kind == "tag" and f.key:
            name = f.key.rsplit("/", 1)[-1]
            rec = next((b for b in self.ledger.bag_files(f.job_id, f.sink)
                        if b.name == name and b.digests.get("sha256")), None)
            if rec is None:
                return None  # nothing says what the tag file should hold
            sink = self.sinks[f.sink]
            try:
                data = storage.read_small(sink, f.key)
            except (ArchiverError, OSError):
                return None
            if data is not None and hashlib.sha256(data).hexdigest() == rec.digests["sha256"]:
                return None  # as written: the finding follows from another tag file
            return Repair("missing" if data is None else "altered", f.sink, f.job_id,
                          f"bag:{name}", f.key, f.where, expect=_hashable(rec.digests))
        return None

    def _sources(self, t: Repair, damaged: set) -> list[tuple[str, Sink | None, str]]:
        """(label, sink or None for the API, key there), in the order tried."""
        out: list[tuple[str, Sink | None, str]] = []
        if t.path.startswith("bag:"):
            name = t.path[4:]
            for label, sink in self.sinks.items():
                if label == t.sink:
                    continue
                for b in self.ledger.bag_files(t.job_id, label):
                    if b.name == name and b.digests.get("sha256") == t.expect["sha256"]:
                        out.append((f"sink {label}", sink, b.key))
            return out
        copies = self.ledger.copies(t.job_id)
        for label, sink in self.sinks.items():  # in the configuration's order
            row = copies.get((t.path, label))
            if row is not None and label != t.sink and (t.job_id, t.path, label) not in damaged \
                    and row.stored.get("sha256") == t.expect.get("sha256"):
                out.append((f"sink {label}", sink, row.key))
        out.append((API, None, t.key))
        return out

    # ------------------------------------------------------------------ one object
    def _repair(self, t: Repair, damaged: set) -> None:
        t.detail = self._attempt(t, damaged) or ""
        if t.outcome == FAILED and not self.report.dry_run:
            self.ledger.event("failed", f"repair of {t.where}: {t.detail}", job_id=t.job_id,
                              path=t.path, sink=t.sink)

    def _attempt(self, t: Repair, damaged: set) -> str | None:
        """Try the sources in turn; None on success, else why the object is not repaired."""
        sink = self.sinks[t.sink]
        if t.kind == "altered" and not can_replace(sink):
            return (f"sink {t.sink} (type {sink.name}) cannot repair in place: it cannot "
                    "replace an object while keeping the damaged one; move the object "
                    "aside, then run archiver repair again")
        tried = []
        for label, source, key in self._sources(t, damaged):
            try:
                if self.report.dry_run:
                    self._check_source(t, source, key)
                    t.outcome, t.source = WOULD_REPAIR, label
                    return None
                stored = self._restore(t, source, key)
            except (_SourceFailed, storage.DigestMismatch) as exc:
                tried.append(f"{label}: {exc}")
                continue
            except ConflictError as exc:
                return f"the key changed meanwhile and was left untouched: {exc}"
            except (ArchiverError, OSError, NotImplementedError) as exc:
                return f"writing to sink {t.sink} failed, nothing was replaced: {exc}"
            t.outcome, t.source = REPAIRED, label
            replaced = stored.extra.get("replaced") or {}
            t.kept = replaced.get("kept_at")
            self._record(t, stored, replaced)
            return None
        return ("no good source: " + "; ".join(tried)) if tried else \
            "no good source: no other sink holds this object"

    def _check_source(self, t: Repair, source: Sink | None, key: str) -> None:
        """Dry run: would this source be tried with a chance (without reading it)?"""
        if source is None:
            self._api_item(t)
            return
        try:
            found = source.stat(key)
        except (ArchiverError, OSError) as exc:
            raise _SourceFailed(str(exc)) from exc
        if found is None:
            raise _SourceFailed(f"no object at {source.describe(key)}")
        sha = found.digests.get("sha256")
        if sha and sha != t.expect.get("sha256"):
            raise _SourceFailed(f"{source.describe(key)} holds other bytes (sha256 {sha})")

    def _restore(self, t: Repair, source: Sink | None, key: str):
        target = self.sinks[t.sink]
        writer_sink = target if t.kind == "missing" else _Replacing(target)
        opened = self._api_stream(t) if source is None else _sink_stream(source, key)
        with opened as chunks:
            return storage.put_stream(writer_sink, self.ledger, t.key, chunks,
                                      job_id=t.job_id, path=t.path, expect=t.expect)

    def _record(self, t: Repair, stored, replaced: dict) -> None:
        data = {"key": t.key, "kind": t.kind, "source": t.source, "size": stored.size,
                "sha256": stored.digests.get("sha256"), "existed": stored.existed}
        if replaced:
            data["replaced"] = replaced
        message = f"{t.kind} object restored from {t.source}" + (
            f"; the damaged bytes are kept at {t.kept}" if t.kept else "")
        with self.ledger.batch():
            if not t.path.startswith("bag:"):
                self.ledger.record_copy(t.job_id, t.path, stored, received=t.received,
                                        chain=[{"transform": "repair", "from": t.source,
                                                "measures": "stored"}], verified=True)
            self.ledger.event("repaired", message, job_id=t.job_id, path=t.path,
                              sink=t.sink, data=data)

    # ------------------------------------------------------------------ the API
    def _api_item(self, t: Repair):
        """(job, item) of the object at the API; _SourceFailed saying why not."""
        if t.path.startswith("bag:"):
            raise _SourceFailed("tag files are not served by the API")
        if t.job_id not in self._jobs:
            self._jobs[t.job_id] = self._api_job(t.job_id)
        found = self._jobs[t.job_id]
        if isinstance(found, str):
            raise _SourceFailed(found)
        job, items = found
        item = next((i for i in items if i.path == t.path), None)
        if item is None:
            raise _SourceFailed(f"job {t.job_id}'s result no longer lists {t.path!r}")
        if item.keys.get(t.sink) != t.key:
            raise _SourceFailed(f"the key for {t.path!r} in sink {t.sink} would now be "
                                f"{item.keys.get(t.sink)!r}, not {t.key!r}")
        return job, item

    def _api_job(self, job_id: str):
        """(job, items) while the job is served and not expired, else why not (a string)."""
        try:
            job = self.rt.source.get_job(job_id)
            expires = parse_iso(job.expires_at)
            if job.status == "expired" or (expires is not None and expires <= time.time()):
                return f"job {job_id} has expired at Plangrep"
            return job, self.rt.items(job, self.rt.source.read_result(job))
        except (ArchiverError, OSError) as exc:
            text = str(exc)  # source errors name the job already
            return text if text.startswith(f"job {job_id}") else f"job {job_id}: {text}"

    @contextmanager
    def _api_stream(self, t: Repair) -> Iterator[Iterator[bytes]]:
        """The object as ``archiver run`` would store it in the sink: downloaded, then the
        common chain and the sink's own chain (job.json/result.json: as served)."""
        job, item = self._api_item(t)
        head, own = self.rt.store_context().chains(job, item.artifact, t.key)
        chain = own[t.sink]
        try:
            download = None if item.data is not None else self.rt.source.open(item.artifact)
        except (ArchiverError, OSError) as exc:
            raise _SourceFailed(str(exc)) from exc

        def pieces() -> Iterator[bytes]:
            for chunk in (item.data,) if download is None else download:
                for data in head.feed(chunk):
                    yield from chain.feed(data)
            for data in head.finish():
                yield from chain.feed(data)
            yield from chain.finish()

        try:
            yield _guarded(pieces())
        finally:
            if download is not None:
                download.close()

    # ------------------------------------------------------------------ afterwards
    def _reaudit(self) -> None:
        """Audit again the jobs repaired, in the sinks repaired: what verify now finds."""
        touched = {(r.sink, r.job_id) for r in self.report.repairs}
        if not touched:
            return
        self.report.remaining = [f for f in self.report.remaining
                                 if (f.sink, f.job_id) not in touched]
        auditor = Auditor(self.ledger, self.sinks)
        again = auditor.run(sorted({s for s, _ in touched}),
                            jobs=sorted({j for _, j in touched}))
        for finding in again.findings:
            if (finding.sink, finding.job_id) in touched and not any(
                    r.outcome != REPAIRED and r.key == finding.key and r.sink == finding.sink
                    for r in self.report.repairs):
                self.report.remaining.append(finding)


@contextmanager
def _sink_stream(source: Sink, key: str) -> Iterator[Iterator[bytes]]:
    with ExitStack() as stack:
        try:
            chunks = stack.enter_context(source.open_read(key))
        except (ArchiverError, OSError) as exc:
            raise _SourceFailed(str(exc)) from exc
        yield _guarded(chunks)


def _guarded(chunks) -> Iterator[bytes]:
    """The source's chunks; its failures (read, transform) become :class:`_SourceFailed`."""
    try:
        yield from chunks
    except (ArchiverError, OSError) as exc:
        raise _SourceFailed(str(exc)) from exc


def _hashable(digests: dict[str, Any]) -> dict[str, str]:
    """The recorded digests repair can recompute (hashlib names)."""
    return {a: str(v) for a, v in digests.items() if a in hashlib.algorithms_guaranteed}


__all__ = ["Repairer", "RepairReport", "Repair", "can_replace"]
