"""BagIt (RFC 8493) tag files for one archived job in one sink.

The bag root is the job's directory, ``{project_id}/{job_id}/``; the payload is what the
layout already puts under ``data/``. Beside it go ``bagit.txt``, ``manifest-<alg>.txt``
(one per configured algorithm), ``archiver-names.json`` (each payload file's original
path), ``bag-info.txt``, ``audit.jsonl`` (the job's audit records) and, last of all,
``tagmanifest-<alg>.txt`` with ``tagmanifest-sha256.txt`` the very last object written.
They are written through the sink's ordinary writer (so they get the sink's retention,
and are never overwritten), only for a job whose every object has a verified copy in
that sink: a bag with ``tagmanifest-sha256.txt`` is complete by construction, and an
incomplete job gets no tag files.

Manifests are built from the ledger's copies of the job in that sink, whichever run
stored them, with the sink's real keys relative to the bag root (``data/...``). Digests
the ledger lacks (an algorithm no checksum transform computed) are computed by reading
the stored object back. Payload names written by this release never hold ``%``, CR or
LF (:mod:`archiver.keys` maps them to look-alike characters), so manifest lines need no
encoding and every BagIt reader agrees on them; names stored by earlier releases (kept
where they are) are encoded as RFC 8493 asks: ``%`` → ``%25``, CR → ``%0D``, LF →
``%0A``. ``archiver-names.json`` maps every payload file back to the path it came from
(the API's artifact path, ``job.json``, ``result.json``); the tag manifests cover it.

A run cut short between tag files is resumed: an existing ``bag-info.txt`` or
``audit.jsonl`` is adopted as stored (its date and records are history), while an
existing ``bagit.txt``, manifest or ``archiver-names.json`` with other content than the
ledger implies is an error naming the key, left untouched. A complete bag of an earlier
release (no ``archiver-names.json``) is adopted as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from .. import __version__
from .. import keys as keymod
from ..errors import ArchiverError, ConflictError
from ..model import ArtifactResult, Job, StoredObject
from . import storage

if TYPE_CHECKING:
    from ..components import Sink
    from ..config import BagitSettings

log = logging.getLogger("archiver.compliance.bagit")

BAGIT_TXT = b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
AUDIT_NAME = "audit.jsonl"
NAMES_NAME = "archiver-names.json"
NAMES_FORMAT = "archiver-names/1"
ADOPTABLE = ("bag-info.txt", AUDIT_NAME)  # history: kept as first written
#: Manifest algorithms archiver writes and checks (names come from tag file names).
SUPPORTED = ("md5", "sha1", "sha256", "sha512")
_DECODE = re.compile(r"%(25|0A|0D)", re.IGNORECASE)


class BagError(ArchiverError):
    """A bag cannot be written or read; the message names the job, sink and key."""


def encode_path(path: str) -> str:
    """RFC 8493 section 2.1.3: percent-encode ``%``, CR and LF in manifest paths."""
    return path.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def decode_path(path: str) -> str:
    return _DECODE.sub(lambda m: {"25": "%", "0A": "\n", "0D": "\r"}[m.group(1).upper()], path)


def manifest_name(alg: str) -> str:
    return f"manifest-{alg}.txt"


def tagmanifest_name(alg: str) -> str:
    return f"tagmanifest-{alg}.txt"


def manifest_text(entries: Iterable[tuple[str, str]]) -> bytes:
    """``<digest>  <encoded path>`` lines, sorted by path."""
    return "".join(f"{digest}  {encode_path(path)}\n"
                   for path, digest in sorted(entries)).encode("utf-8", "surrogatepass")


def parse_manifest(data: bytes, where: str) -> dict[str, str]:
    """``path -> digest`` of a manifest; a malformed line is an error naming it."""
    out: dict[str, str] = {}
    text = data.decode("utf-8", "surrogatepass")
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        digest, sep, path = line.rstrip("\r").partition(" ")
        path = path.lstrip(" \t")
        if not sep or not path or not re.fullmatch(r"[0-9a-fA-F]{32,128}", digest):
            raise BagError(f"{where}: line {n} is not '<digest> <path>': {line[:200]!r}")
        out[decode_path(path)] = digest.lower()
    return out


def bag_root(project_id: str, job_id: str) -> str:
    return keymod.job_prefix(project_id, job_id)


def tag_key(root: str, name: str) -> str:
    return f"{root}/{name}"


@dataclass
class JobRef:
    """What bag-info needs of a job (from the API, or from the ledger when replicating)."""

    id: str
    project_id: str
    status: str = ""

    @classmethod
    def of(cls, job: Job) -> JobRef:
        return cls(job.id, job.project_id, job.status)


@dataclass
class PayloadFile:
    path: str                 # the ledger's identity (artifact path, job.json, ...)
    key: str                  # the sink-relative key
    relpath: str              # relative to the bag root: data/...
    size: int
    digests: dict[str, str]


def payload_files(ledger, sink: Sink, job: JobRef, algorithms: list[str],
                  expected: set[str] | None) -> list[PayloadFile]:
    """The job's verified copies in ``sink`` with a digest for every algorithm."""
    root = bag_root(job.project_id, job.id)
    rows = {path: row for (path, s), row in ledger.copies(job.id).items() if s == sink.label}
    missing = sorted((expected or set()) - {p for p, r in rows.items() if r.verified})
    if missing:
        raise BagError(f"job {job.id} sink {sink.label}: {len(missing)} object(s) have no "
                       f"verified copy (first: {missing[0]!r}); no tag files written")
    files = []
    for path, row in sorted(rows.items()):
        if not row.key.startswith(root + "/data/"):
            raise BagError(f"job {job.id} sink {sink.label}: key {row.key!r} is outside the "
                           f"bag's data/ directory ({root}/data/); no tag files written (an "
                           "archiver_artifact_key hook? then set bagit: {enabled: false})")
        digests = dict(row.stored)
        lacking = [a for a in algorithms if a not in digests]
        if lacking:
            size, computed = storage.hash_object(sink, row.key, lacking)
            if computed["sha256"] != digests.get("sha256") or size != row.size:
                raise BagError(f"job {job.id} sink {sink.label}: {sink.describe(row.key)} no "
                               f"longer holds the bytes recorded in the ledger (sha256 "
                               f"{computed['sha256']}, recorded {digests.get('sha256')}); "
                               "run 'archiver verify'")
            digests.update(computed)
        files.append(PayloadFile(path, row.key, row.key[len(root) + 1:], row.size, digests))
    return files


def names_text(job: JobRef, files: list[PayloadFile]) -> bytes:
    """``archiver-names.json``: each payload file (relative to the bag root, as in the
    manifests) and the original path it was stored for. Deterministic: one JSON document,
    keys sorted, files sorted by name, UTF-8 (an undecodable byte of an original path,
    a lone surrogate, is written as its JSON escape ``\\udcXX``)."""
    doc = {"format": NAMES_FORMAT, "job_id": job.id, "project_id": job.project_id,
           "files": [{"file": f.relpath, "path": f.path}
                     for f in sorted(files, key=lambda f: f.relpath)]}
    text = json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    return text.encode("utf-8", "backslashreplace")


def parse_names(data: bytes) -> dict[str, str]:
    """``file -> original path`` of an ``archiver-names.json``."""
    doc = json.loads(data.decode("utf-8"))
    if not isinstance(doc, dict) or doc.get("format") != NAMES_FORMAT:
        raise BagError(f"{NAMES_NAME}: not an {NAMES_FORMAT} document")
    return {e["file"]: e["path"] for e in doc["files"]}


def bag_info(job: JobRef, files: list[PayloadFile], settings: BagitSettings,
             when: datetime | None = None) -> bytes:
    when = when or datetime.now(timezone.utc)
    fields: list[tuple[str, str]] = []
    for label, value in settings.info.items():
        for v in value if isinstance(value, list) else [value]:
            fields.append((label, v))
    fields += [("Bagging-Date", when.date().isoformat()),
               ("Payload-Oxum", f"{sum(f.size for f in files)}.{len(files)}"),
               ("External-Identifier", job.id),
               ("Plangrep-Project-Id", job.project_id),
               ("Bag-Software-Agent", f"archiver {__version__}"),
               ("Archiver-Version", __version__)]
    # Values may not break lines: continuation lines start with whitespace (RFC 8493 2.2.2).
    lines = [f"{label}: " + re.sub(r"\r\n|\r|\n", "\n  ", str(value)).strip()
             for label, value in fields]
    return ("\n".join(lines) + "\n").encode("utf-8")


def export_audit(ledger, job_id: str) -> tuple[bytes, int]:
    """The job's audit records as JSON lines, and the last seq exported."""
    lines, last = [], 0
    for row in ledger.audit_rows(job_id):
        lines.append(row.line)
        last = row.seq
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b"", last


@dataclass
class Prepared:
    """A sink's bag, short of the audit export: payload files and manifests."""

    sink: Sink
    files: list[PayloadFile]
    manifests: dict[str, bytes]

    @property
    def oxum(self) -> str:
        return f"{sum(f.size for f in self.files)}.{len(self.files)}"


class BagWriter:
    """Writes the tag files of complete jobs. Every sink of one call gets the same
    ``audit.jsonl`` (one snapshot), so sinks holding the same payload hold identical bags."""

    def __init__(self, ledger, settings: BagitSettings):
        self.ledger, self.settings = ledger, settings

    def has_bag(self, sink: Sink, job_id: str) -> bool:
        return any(b.name == tagmanifest_name("sha256")
                   for b in self.ledger.bag_files(job_id, sink.label))

    def prepare(self, sink: Sink, job: JobRef, expected: set[str] | None) -> Prepared:
        algos = list(self.settings.algorithms)
        files = payload_files(self.ledger, sink, job, algos, expected)
        return Prepared(sink, files, {a: manifest_text((f.relpath, f.digests[a]) for f in files)
                                      for a in algos})

    def write_all(self, job: JobRef, prepared: list[Prepared], failed=None) -> None:
        """Record one ``bagging`` event, export the audit log once, write every bag.
        ``failed(sink_name, exc)`` collects per-sink errors (default: raise)."""
        if not prepared:
            return
        self.ledger.event("bagging", "writing BagIt tag files to sink(s) "
                          + ", ".join(p.sink.label for p in prepared), job_id=job.id, data={
                              p.sink.label: {"payload_oxum": p.oxum, "manifests": {
                                  manifest_name(a): hashlib.sha256(m).hexdigest()
                                  for a, m in p.manifests.items()}} for p in prepared})
        audit = export_audit(self.ledger, job.id)
        when = datetime.now(timezone.utc)
        for p in prepared:
            try:
                self._write(p, job, audit, when)
            except (ArchiverError, OSError) as exc:
                if failed is None:
                    raise
                failed(p.sink.label, exc)

    def write(self, sink: Sink, job: JobRef, expected: set[str] | None = None) -> bool:
        """One sink's bag unless the ledger has it already; True when written now."""
        if self.has_bag(sink, job.id):
            return False
        self.write_all(job, [self.prepare(sink, job, expected)])
        return True

    def _write(self, p: Prepared, job: JobRef, audit: tuple[bytes, int],
               when: datetime) -> None:
        sink, (audit_bytes, last_seq) = p.sink, audit
        root = bag_root(job.project_id, job.id)
        tags: dict[str, bytes] = {"bagit.txt": BAGIT_TXT}
        tags.update({manifest_name(a): m for a, m in p.manifests.items()})
        if not self._older_bag(sink, root):
            tags[NAMES_NAME] = names_text(job, p.files)
        tags["bag-info.txt"] = bag_info(job, p.files, self.settings, when)
        tags[AUDIT_NAME] = audit_bytes
        written = {}
        # The tag files' pending records leave the ledger with the bag's records, in one
        # transaction (not one per file), or, if the bag fails half-way, together below.
        committed: list = []
        try:
            for name, data in tags.items():
                tags[name], written[name] = self._put(sink, job, root, name, data, committed)
            for alg in sorted(p.manifests, key=lambda a: a == "sha256"):  # sha256 last
                name = tagmanifest_name(alg)
                text = manifest_text((n, hashlib.new(alg, d).hexdigest())
                                     for n, d in tags.items())
                _, written[name] = self._put(sink, job, root, name, text, committed)
            with self.ledger.batch():
                for writer in committed:
                    writer.forget()
                for name, stored in written.items():
                    facts = dict(stored.digests)
                    if name == AUDIT_NAME:  # what audit verify expects the export to hold
                        facts["last_seq"] = last_seq if tags[name] == audit_bytes else None
                    self.ledger.record_bag_file(job.id, sink.label, name, stored.key,
                                                stored.size, facts)
                self.ledger.event("bagged", f"BagIt bag complete in sink {sink.label}: "
                                            f"{sink.describe(tag_key(root, 'bagit.txt'))}",
                                  job_id=job.id, sink=sink.label, data={
                                      "payload_oxum": p.oxum, "tagmanifest-sha256": written[
                                          tagmanifest_name("sha256")].digests.get("sha256")})
            committed = []
        finally:
            if committed:  # the bag failed: its committed files' records go all the same
                with self.ledger.batch():
                    for writer in committed:
                        writer.forget()

    @staticmethod
    def _older_bag(sink: Sink, root: str) -> bool:
        """A complete bag of an earlier release (its tag manifest lists no names file)
        is already there: it is adopted as it is (a rerun after the ledger was lost)."""
        key = tag_key(root, tagmanifest_name("sha256"))
        top = storage.read_small(sink, key)
        if top is None:
            return False
        try:
            return NAMES_NAME not in parse_manifest(top, sink.describe(key))
        except BagError:
            return False

    def _put(self, sink: Sink, job: JobRef, root: str, name: str, data: bytes,
             committed: list):
        key = tag_key(root, name)
        try:
            stored = storage.put_bytes(sink, self.ledger, key, data, job_id=job.id,
                                       path=f"bag:{name}", algorithms=self.settings.algorithms,
                                       committed=committed)
            return data, stored
        except ConflictError as exc:
            if name not in ADOPTABLE:
                raise BagError(f"job {job.id} sink {sink.label}: {sink.describe(key)} already "
                               f"holds a different {name}; it was left untouched and the bag "
                               f"cannot be completed ({exc})") from exc
        existing = storage.read_small(sink, key)
        if existing is None:
            raise BagError(f"job {job.id} sink {sink.label}: {sink.describe(key)} vanished "
                           "while being compared; rerun")
        log.info("job %s sink %s: adopting the %s stored by an earlier, interrupted run",
                 job.id, sink.label, name)
        stored = sink.stat(key) or StoredObject(sink.label, key, len(existing))
        stored.digests = {**stored.digests, **{a: hashlib.new(a, existing).hexdigest()
                                               for a in self.settings.algorithms}}
        return existing, stored


def write_bags(pipeline, job: Job, results: list[ArtifactResult]) -> list[str]:
    """Tag files of an archived job in every sink; problems as messages (none: done)."""
    writer, ref = BagWriter(pipeline.ledger, pipeline.settings.bagit), JobRef.of(job)
    expected = {r.path for r in results}
    problems, prepared = [], []

    def failed(name: str, exc: Exception) -> None:
        log.error("job %s sink %s: BagIt tag files not written: %s", job.id, name, exc)
        problems.append(f"job {job.id} sink {name}: BagIt tag files not written: {exc}")

    for name, sink in pipeline.sinks.items():
        try:
            if not writer.has_bag(sink, job.id):
                prepared.append(writer.prepare(sink, ref, expected))
        except (ArchiverError, OSError) as exc:
            failed(name, exc)
    if pipeline.stop.is_set():
        return problems + [f"job {job.id}: interrupted before the BagIt tag files were written"]
    writer.write_all(ref, prepared, failed)
    return problems
