"""Fixity audits (``archiver verify``): re-read stored objects, recompute their digests,
compare them with the ledger and with the job's bag, and record a fixity event per object.

What is found, each naming the sink, the job and the object or tag file:

* ``altered``: the stored bytes no longer have the digest (or size) the ledger recorded;
* ``missing``: the object is gone;
* ``added``: a file under the bag's ``data/`` that archiver never stored (found by
  listing the sink where it can list; otherwise a manifest line the ledger does not know);
* ``manifest``: a manifest line disagrees with the ledger, or a recorded copy is not
  listed;
* ``tag``: a tag file differs from ``tagmanifest-sha256.txt`` or from the ledger's record
  of what was written, or is missing;
* ``retention``: the retention the store holds now (``Sink.retention_in_force``) is
  missing, shorter or weaker than the one recorded when the copy was stored (the sink's
  read-back, in the ``retention`` audit record), or, for a copy stored without one, than
  the configured retention (``Sink.retention``) counted from when it was stored; or a
  hold was removed;
* ``unreachable`` / ``unchecked``: the sink could not be read; the rest of it is listed as
  not checked. Nothing is ever repaired here (``archiver repair``,
  :mod:`archiver.compliance.repair`, runs this audit and restores what it names).

Which copies are checked is :func:`~archiver.compliance.fixity_sampling.select`'s (all,
or a sample rotating through the least recently checked); what the audit finds goes into
a :class:`~archiver.compliance.fixity_report.FixityReport`; the retention a copy must
still carry is worked out in :mod:`archiver.compliance.fixity_retention`. Memory: one
chunk per object read, plus each bag's manifests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..components import Sink
from ..errors import ArchiverError
from ..ledger import CopyRow
from . import storage
from .bagit import (
    SUPPORTED,
    BagError,
    bag_root,
    manifest_name,
    parse_manifest,
    tag_key,
    tagmanifest_name,
)
from .fixity_report import Finding, FixityReport
from .fixity_retention import (
    HOLDS,
    configured_retention,
    describe_retention,
    recorded_retention,
    retention_shortfall,
)
from .fixity_sampling import select

log = logging.getLogger("archiver.compliance.fixity")


@dataclass
class _Bag:
    manifests: dict[str, dict[str, str]] = field(default_factory=dict)  # alg -> relpath -> hex


class Auditor:
    """Runs one fixity audit over configured sinks; reads, never writes, the sinks.

    ``on_progress`` (set it before :meth:`run`): progress events, as ``archiver run``
    makes them (``total``, ``bytes``, ``artifact``), for a display."""

    on_progress = None

    def __init__(self, ledger, sinks: dict[str, Sink], *, record: bool = True):
        self.ledger, self.sinks = ledger, sinks
        self.record = record  # False: a dry run (``repair --dry-run``) writes no ledger row
        self.report = FixityReport()
        self._down: dict[str, str] = {}
        self._done: set[tuple[str, str, str]] = set()  # (job_id, path, sink) checked

    def run(self, sink_names: list[str] | None = None, *, sample: float | None = None,
            budget: int | None = None, since: float | None = None,
            jobs: list[str] | None = None) -> FixityReport:
        names = sink_names or list(self.sinks)
        rows = [r for r in self.ledger.copy_rows(since=since) if r.sink in names
                and (not jobs or r.job_id in jobs)]
        self.report.objects = len(rows)
        groups: dict[tuple[str, str], list[CopyRow]] = defaultdict(list)
        picked = select(rows, sample, budget)
        if self.on_progress is not None:
            self.on_progress("total", {"bytes": sum(r.size or 0 for r in picked)})
        for row in picked:
            groups[(row.sink, row.job_id)].append(row)
        for (name, job_id), chosen in sorted(groups.items()):
            if name in self._down:
                self._unchecked(name, job_id, chosen)
                continue
            try:
                self._job(self.sinks[name], job_id, chosen)
            except _Unreachable:
                self._unchecked(name, job_id, [r for r in chosen if _ident(r) not in self._done])
        if not self.record:
            return self.report
        self.ledger.event("verify", f"fixity audit: {self.report.checked} object(s) checked, "
                                    f"{len(self.report.findings)} problem(s)",
                          data={"sinks": names, "checked": self.report.checked,
                                "bytes": self.report.bytes,
                                "findings": len(self.report.findings)})
        return self.report

    # ------------------------------------------------------------------ helpers
    def _find(self, kind: str, sink: Sink, job_id: str, where: str, detail: str,
              key: str | None = None, path: str | None = None) -> None:
        finding = Finding(kind, sink.label, job_id, where, detail, key, path)
        log.info("%s", finding)
        self.report.findings.append(finding)

    def _down_now(self, sink: Sink, job_id: str, where: str, exc: Exception) -> None:
        self._down[sink.label] = str(exc)
        self._find("unreachable", sink, job_id, where, f"the sink could not be read: {exc}")
        raise _Unreachable()

    def _unchecked(self, name: str, job_id: str, rows: list[CopyRow]) -> None:
        for row in rows:
            self.report.findings.append(Finding(
                "unchecked", name, job_id, row.key,
                f"not checked: sink unreachable ({self._down[name][:200]})"))

    def _job(self, sink: Sink, job_id: str, chosen: list[CopyRow]) -> None:
        project = chosen[0].project_id or chosen[0].key.split("/", 1)[0]
        root = bag_root(project, job_id)
        all_rows = self.ledger.copy_rows(sink=sink.label, job_id=job_id)
        bag = self._bag(sink, job_id, root)
        if bag is not None:
            self._manifest_vs_ledger(sink, job_id, root, bag, all_rows)
        self._added(sink, job_id, root, bag, all_rows)
        algos = sorted(bag.manifests) if bag else []
        recorded = self._recorded_retention(job_id, sink.label)
        for row in chosen:
            self._object(sink, row, root, bag, algos, recorded.get(row.path))
            self._done.add(_ident(row))
            if self.on_progress is not None:
                self.on_progress("artifact", {"job": job_id, "path": row.key, "ok": True,
                                              "size": row.size or 0})

    def _read(self, sink: Sink, job_id: str, key: str) -> bytes | None:
        try:
            return storage.read_small(sink, key)
        except (ArchiverError, OSError) as exc:
            self._down_now(sink, job_id, sink.describe(key), exc)

    def _bag(self, sink: Sink, job_id: str, root: str) -> _Bag | None:
        """Check the tag files; return the bag's manifests (None: the job has no bag)."""
        recorded = {b.name: b for b in self.ledger.bag_files(job_id, sink.label)}
        top = tagmanifest_name("sha256")
        raw = self._read(sink, job_id, tag_key(root, top))
        if raw is None:
            if recorded:
                self._find("tag", sink, job_id, sink.describe(tag_key(root, top)),
                           "missing: the ledger recorded this bag as complete",
                           tag_key(root, top))
            else:
                return None
        listed: dict[str, str] = {}
        if raw is not None:
            try:
                listed = parse_manifest(raw, sink.describe(tag_key(root, top)))
            except BagError as exc:
                self._find("tag", sink, job_id, sink.describe(tag_key(root, top)), str(exc))
        names = sorted(set(listed) | set(recorded))
        contents: dict[str, bytes] = {}
        if raw is not None:
            contents[top] = raw
        for name in names:
            if name == top:
                continue
            data = self._read(sink, job_id, tag_key(root, name))
            where = sink.describe(tag_key(root, name))
            if data is None:
                self._find("tag", sink, job_id, where, "missing tag file", tag_key(root, name))
                continue
            contents[name] = data
            actual = hashlib.sha256(data).hexdigest()
            if name in listed and listed[name] != actual:
                self._find("tag", sink, job_id, where, f"altered: sha256 {actual}, "
                                                       f"{top} says {listed[name]}",
                           tag_key(root, name))
            elif name not in listed and not name.startswith("tagmanifest-"):
                self._find("tag", sink, job_id, where, f"not listed in {top}")
        for name, rec in recorded.items():
            if name in contents:
                actual = hashlib.sha256(contents[name]).hexdigest()
                if rec.digests.get("sha256") not in (None, actual):
                    self._find("tag", sink, job_id, sink.describe(rec.key),
                               f"altered since it was written: sha256 {actual}, the ledger "
                               f"recorded {rec.digests['sha256']}", rec.key)
        bag = _Bag()
        for name, data in contents.items():
            if name.startswith("manifest-") and name.endswith(".txt"):
                if name[9:-4] not in SUPPORTED:
                    self.report.notes.append(f"sink {sink.label} job {job_id}: {name} not "
                                             "checked (algorithm not supported)")
                    continue
                try:
                    bag.manifests[name[9:-4]] = parse_manifest(data, sink.describe(
                        tag_key(root, name)))
                except BagError as exc:
                    self._find("manifest", sink, job_id, sink.describe(tag_key(root, name)),
                               str(exc))
        if "sha256" not in bag.manifests:
            self._find("tag", sink, job_id, sink.describe(tag_key(root, manifest_name(
                "sha256"))), "the bag has no readable manifest-sha256.txt")
        return bag

    def _manifest_vs_ledger(self, sink: Sink, job_id: str, root: str, bag: _Bag,
                            rows: list[CopyRow]) -> None:
        manifest = bag.manifests.get("sha256", {})
        known = set()
        name = manifest_name("sha256")
        for row in rows:
            rel = row.key[len(root) + 1:]
            known.add(rel)
            listed, recorded = manifest.get(rel), row.stored.get("sha256")
            if listed is None and manifest:
                self._find("manifest", sink, job_id, sink.describe(row.key),
                           f"stored per the ledger but not listed in {name}")
            elif listed is not None and listed != recorded:
                self._find("manifest", sink, job_id, f"{name} line for {rel}",
                           f"says {listed}; the ledger recorded {recorded}")
        for rel in sorted(set(manifest) - known):
            self._find("added", sink, job_id, sink.describe(f"{root}/{rel}"),
                       f"listed in {name} but never stored by archiver")

    def _added(self, sink: Sink, job_id: str, root: str, bag: _Bag | None,
               rows: list[CopyRow]) -> None:
        try:
            keys = storage.list_keys(sink, f"{root}/data/")
        except (ArchiverError, OSError) as exc:
            self._down_now(sink, job_id, sink.describe(f"{root}/data/"), exc)
        if keys is None:
            note = (f"sink {sink.label} cannot list keys: files added under data/ outside the "
                    "manifest cannot be seen there; the manifest was compared with the ledger")
            if note not in self.report.notes:
                self.report.notes.append(note)
            return
        known = {r.key for r in rows}
        listed = {f"{root}/{rel}" for rel in (bag.manifests.get("sha256", {}) if bag else {})}
        for key in keys:
            if key not in known and key not in listed:
                self._find("added", sink, job_id, sink.describe(key),
                           "present under data/ but in neither the manifest nor the ledger")

    def _object(self, sink: Sink, row: CopyRow, root: str, bag: _Bag | None,
                algos: list[str], recorded: dict[str, Any] | None = None) -> None:
        key, job_id = row.key, row.job_id
        where = sink.describe(key)
        try:
            size, digests = storage.hash_object(sink, key, algos, progress=self.on_progress,
                                                job=job_id, total=row.size)
        except (ArchiverError, OSError) as exc:
            try:
                exists = sink.stat(key) is not None
            except (ArchiverError, OSError) as exc2:
                self._down_now(sink, job_id, where, exc2)
            kind, detail = (("unreadable", f"exists but cannot be read: {exc}") if exists
                            else ("missing", "the object is gone"))
            self._find(kind, sink, job_id, where, detail, key, row.path)
            self._fixity(row, False, kind, {"key": key})
            self.report.checked += 1
            return
        self.report.checked += 1
        self.report.bytes += size
        expected = row.stored.get("sha256")
        problems = []
        if size != row.size:
            problems.append(f"size {size}, the ledger recorded {row.size}")
        if digests["sha256"] != expected:
            problems.append(f"sha256 {digests['sha256']}, the ledger recorded {expected}")
        rel = key[len(root) + 1:]
        for alg, manifest in (bag.manifests.items() if bag else ()):
            listed = manifest.get(rel)  # sha256 lines were compared with the ledger already
            if alg != "sha256" and listed is not None and listed != digests.get(alg):
                problems.append(f"{alg} {digests.get(alg)}, {manifest_name(alg)} says {listed}")
        if problems:
            self._find("altered", sink, job_id, where, "; ".join(problems), key, row.path)
        short, current = self._retention(sink, row, where, recorded)
        data = {"key": key, "size": size, "sha256": digests["sha256"],
                "expected_sha256": expected}
        if current is not None:
            data["retention"] = current
        self._fixity(row, not problems and not short,
                     "altered" if problems else "retention" if short else "ok", data)

    def _fixity(self, row: CopyRow, ok: bool, outcome: str, data: dict[str, Any]) -> None:
        if self.record:
            self.ledger.record_fixity(row.job_id, row.path, row.sink, ok, outcome, data)

    # ------------------------------------------------------------------ retention
    def _recorded_retention(self, job_id: str, sink: str) -> dict[str, dict[str, Any]]:
        """Per path, the retention the sink confirmed when it stored the copy (the last
        ``retention`` audit record of that path in that sink)."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.ledger.audit_rows(job_id):
            try:
                record = json.loads(row.line)
            except ValueError:
                continue  # ``archiver audit verify`` reports broken records
            if record.get("kind") == "retention" and record.get("sink") == sink \
                    and isinstance(record.get("data"), dict):
                out[record.get("path")] = recorded_retention(record["data"])
        return out

    def _retention(self, sink: Sink, row: CopyRow, where: str,
                   recorded: dict[str, Any] | None) -> tuple[list[str], dict | None]:
        """Check the retention in force for one copy: (problems, what the store holds)."""
        wanted, basis = (recorded, "recorded when it was stored") if recorded else \
            (configured_retention(sink.retention(row.key), row.stored_at),
             "configured, counted from when it was stored")
        if not wanted or not (wanted.get("retain_until") or any(wanted.get(h)
                                                                 for h in HOLDS)):
            return [], None
        try:
            current = sink.retention_in_force(row.key)
        except (ArchiverError, OSError) as exc:
            self.report.findings.append(Finding(
                "unchecked", sink.label, row.job_id, where,
                f"retention not checked: it could not be read back: {str(exc)[:200]}"))
            return [], None
        if current is None:
            note = (f"sink {sink.label} cannot read retention back: whether its objects' "
                    "retention is still in force was not checked")
            if note not in self.report.notes:
                self.report.notes.append(note)
            return [], None
        problems = retention_shortfall(wanted, current, time.time())
        if problems:
            self._find("retention", sink, row.job_id, where,
                       f"{'; '.join(problems)} (wanted: {describe_retention(wanted)}, "
                       f"{basis}; the store holds: {describe_retention(current)})")
        return problems, current


def _ident(row: CopyRow) -> tuple[str, str, str]:
    return row.job_id, row.path, row.sink


class _Unreachable(Exception):
    """The current sink cannot be read; its remaining objects are reported unchecked."""
