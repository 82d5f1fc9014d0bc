"""Data side of the Plangrep emulator: artifact bytes, jobs and result documents.

Nothing here touches the network; :mod:`archiver.testing.emulator_http` serves what this
module produces and :mod:`archiver.testing.emulator` ties both together.

Artifact bytes are never stored. They are a pure function of ``(seed, job_id, path)``: one
base block of at most 1 MiB comes from ``random.Random(key).randbytes``, and block ``i`` of
a larger artifact is that base block rotated left by ``(i * 0x9E3779B1) mod 2**20`` bytes
(an odd multiplier, so no two of the first 2**20 blocks are equal). Serving a block is two
``memoryview`` slices of the cached base block, so a 10 GiB artifact costs 1 MiB of memory
and no copying at all.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import lzma
import random
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

BLOCK = 1 << 20
_ROTATE = 0x9E3779B1
# Compressed artifacts up to this plaintext size are compressed once and kept in memory;
# larger ones are compressed twice (once to learn Content-Length, once while serving).
COMPRESS_CACHE_LIMIT = 64 << 20
COMPRESSIONS = (None, "gzip", "bzip2", "xz", "zstd")
PLACEMENTS = (None, "document", "sheet", "result", "entity")
AUTO_PLACEMENT = ("document", "sheet", "result", "entity")
SHAPES = ("documents", "flat")

NON_TERMINAL = ("provisioning", "awaiting_uploads", "uploading", "preflighting",
                "blocked_insufficient_credits", "processing")
WITH_RESULT = ("completed", "completed_with_errors")
TERMINAL = WITH_RESULT + ("failed", "cancelled", "expired")
STATUSES = NON_TERMINAL + TERMINAL
RETENTION = timedelta(days=7)


@dataclass(frozen=True)
class ArtifactSpec:
    """One artifact of a job.

    ``where`` places it in the result (``document``: ``documents[].artifacts``; ``sheet``:
    ``documents[].sheets[].artifacts``; ``result``: only the top-level ``artifacts`` list;
    ``entity``: a project entity nested under ``documents[].specifications[].sections[]``,
    served by ``/projects/{projectId}/artifact``). ``None`` cycles through those four in that
    order by position. ``absolute`` picks an absolute or host-relative URL (``None``
    alternates, relative first).
    """

    path: str
    size: int = 1024
    data: bytes | None = None
    type: str = "extracted_json"
    content_disposition: str | None = None
    compress: str | None = None
    where: str | None = None
    absolute: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError("ArtifactSpec.path must be a non-empty string")
        if self.data is None and (not isinstance(self.size, int) or self.size < 0):
            raise ValueError(f"ArtifactSpec {self.path!r}: size must be an int >= 0")
        if self.compress not in COMPRESSIONS:
            raise ValueError(f"ArtifactSpec {self.path!r}: compress must be one of "
                             f"{COMPRESSIONS}, not {self.compress!r}")
        if self.where not in PLACEMENTS:
            raise ValueError(f"ArtifactSpec {self.path!r}: where must be one of {PLACEMENTS}")


def _compressor(kind: str) -> tuple[Callable, Callable]:
    if kind == "gzip":  # wbits=31: gzip container, mtime 0, so the output is deterministic
        c = zlib.compressobj(6, zlib.DEFLATED, 31)
        return c.compress, c.flush
    if kind == "bzip2":
        c = bz2.BZ2Compressor(9)
        return c.compress, c.flush
    if kind == "xz":
        c = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=1)
        return c.compress, c.flush
    import zstandard  # lazily: only zstd artifacts need it

    c = zstandard.ZstdCompressor(level=3).compressobj()
    return c.compress, c.flush


def decompress(kind: str | None, data: bytes) -> bytes:
    """Undo ``ArtifactSpec.compress`` (for tests)."""
    if kind is None:
        return data
    if kind == "gzip":
        return zlib.decompress(data, 47)
    if kind == "bzip2":
        return bz2.decompress(data)
    if kind == "xz":
        return lzma.decompress(data)
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _split(view: memoryview, chunk: int) -> Iterator[memoryview]:
    for off in range(0, len(view), chunk):
        yield view[off:off + chunk]


def content_disposition_for(path: str) -> str:
    """``attachment; filename="<basename>"`` (plus RFC 6266 ``filename*`` when not ASCII)."""
    name = path.rstrip("/").rsplit("/", 1)[-1] or "artifact"
    fallback = name.encode("ascii", "replace").decode("ascii").replace("?", "_")
    fallback = fallback.replace("\\", "\\\\").replace('"', '\\"')
    if name.isascii():
        return f'attachment; filename="{fallback}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class Artifact:
    """A servable artifact: its spec plus where it lives; bytes are generated on demand."""

    def __init__(self, spec: ArtifactSpec, seed: object, job_id: str, project_id: str,
                 where: str, absolute: bool):
        self.spec = spec
        self.path = spec.path
        self.job_id = job_id
        self.project_id = project_id
        self.where = where
        self.absolute = absolute
        self.route = "project_artifact" if where == "entity" else "artifact"
        self.key = f"{seed}|{job_id}|{spec.path}"
        self.token = hashlib.sha256(("storage|" + self.key).encode()).hexdigest()[:32]
        self._lock = threading.RLock()  # the compressed cache reads the base block
        self._base: bytes | None = None
        self._served: bytes | None = None
        self._served_len: int | None = None

    # ---------------------------------------------------------------- plaintext
    @property
    def plain_size(self) -> int:
        return len(self.spec.data) if self.spec.data is not None else self.spec.size

    def _base_block(self) -> memoryview:
        if self._base is None:
            with self._lock:
                if self._base is None:
                    n = min(self.spec.size, BLOCK)
                    self._base = random.Random(self.key).randbytes(n)
        return memoryview(self._base)

    def iter_plain(self, chunk: int = BLOCK) -> Iterator[memoryview]:
        """The uncompressed content, as read-only views of at most ``chunk`` bytes."""
        chunk = max(1, int(chunk))
        if self.spec.data is not None:
            yield from _split(memoryview(self.spec.data), chunk)
            return
        remaining = self.spec.size
        if remaining == 0:
            return
        base = self._base_block()
        n = len(base)
        i = 0
        while remaining > 0:
            r = (i * _ROTATE) % n
            for part in (base[r:], base[:r]):
                part = part[:remaining]
                if part:
                    yield from (_split(part, chunk) if len(part) > chunk else (part,))
                    remaining -= len(part)
                if remaining <= 0:
                    break
            i += 1

    # ---------------------------------------------------------------- served bytes
    def _iter_compressed(self, chunk: int) -> Iterator[memoryview]:
        compress, flush = _compressor(self.spec.compress)
        for piece in self.iter_plain(BLOCK):
            out = compress(piece)
            if out:
                yield from _split(memoryview(out), chunk)
        tail = flush()
        if tail:
            yield from _split(memoryview(tail), chunk)

    def _cached_served(self) -> bytes | None:
        if self.spec.compress is None or self.plain_size > COMPRESS_CACHE_LIMIT:
            return None
        if self._served is None:
            with self._lock:
                if self._served is None:
                    self._served = b"".join(self._iter_compressed(BLOCK))
        return self._served

    def served_length(self) -> int:
        """Content-Length of the served (possibly compressed) bytes."""
        if self.spec.compress is None:
            return self.plain_size
        cached = self._cached_served()
        if cached is not None:
            return len(cached)
        if self._served_len is None:
            self._served_len = sum(len(p) for p in self._iter_compressed(BLOCK))
        return self._served_len

    def iter_served(self, chunk: int = BLOCK) -> Iterator[memoryview]:
        """Exactly the bytes the emulator sends, as views of at most ``chunk`` bytes."""
        chunk = max(1, int(chunk))
        if self.spec.compress is None:
            return self.iter_plain(chunk)
        cached = self._cached_served()
        if cached is not None:
            return _split(memoryview(cached), chunk)
        return self._iter_compressed(chunk)

    def content_disposition(self) -> str:
        if self.spec.content_disposition is not None:
            return self.spec.content_disposition
        return content_disposition_for(self.path)


# --------------------------------------------------------------------------- time

def to_utc(value: datetime | str | None, default: datetime) -> datetime:
    if value is None:
        return default
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).replace(microsecond=0)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- jobs

class JobState:
    """Everything the emulator knows about one job (mutated only under the emulator lock)."""

    def __init__(self, job_id: str, project_id: str, status: str, created_at: datetime,
                 expires_at: datetime, shape: str, artifacts: list[Artifact],
                 external_id: str | None, seq: int):
        self.id = job_id
        self.project_id = project_id
        self.status = status
        self.created_at = created_at
        self.updated_at = created_at
        self.completed_at: datetime | None = None
        self.expires_at = expires_at
        self.shape = shape
        self.artifacts = {a.path: a for a in artifacts}
        self.external_id = external_id
        self.seq = seq
        self.partial = status == "completed_with_errors"
        self.had_result = False        # the job completed at some point (result exists)
        self.result_bytes: bytes | None = None  # serialised once, when the result is built

    def effective_status(self, now: datetime) -> str:
        return "expired" if self.status == "expired" or now >= self.expires_at else self.status

    # Deterministic bookkeeping numbers: one 12-page drawing set, plus a 4-page
    # specification that failed entirely when the job completed with errors.
    def docs(self) -> list[dict]:
        docs = [{"id": f"doc_{self.id}_1", "file": f"file_{self.id}_1", "name": "drawings.pdf",
                 "pages": 12, "ok": 12}]
        if self.partial:
            docs.append({"id": f"doc_{self.id}_2", "file": f"file_{self.id}_2",
                         "name": "specifications.pdf", "pages": 4, "ok": 0})
        return docs

    def pages(self) -> tuple[int, int]:
        if self.status in ("provisioning", "awaiting_uploads", "uploading"):
            return 0, 0
        docs = self.docs()
        total = sum(d["pages"] for d in docs)
        return total, (sum(d["ok"] for d in docs) if self.had_result else 0)

    def to_dict(self, now: datetime, result_url: str | None) -> dict:
        status = self.effective_status(now)
        pages, ok = self.pages()
        file_status = {"provisioning": "pending", "awaiting_uploads": "pending",
                       "uploading": "uploading", "preflighting": "uploaded",
                       "blocked_insufficient_credits": "uploaded", "processing": "processing",
                       "failed": "failed", "cancelled": "cancelled"}.get(self.status, "completed")
        if self.had_result:
            files = [{"id": d["file"], "fileName": d["name"],
                      "status": "completed" if d["ok"] else "failed"} for d in self.docs()]
        else:
            files = [{"id": d["file"], "fileName": d["name"], "status": file_status}
                     for d in self.docs()]
        error = None
        if self.status == "failed":
            error = {"code": "processing_failed", "message": "The files could not be processed."}
        return {
            "id": self.id,
            "externalId": self.external_id,
            "status": status,
            "projectId": self.project_id,
            "limits": {"maxDeclaredBytes": 10_000_000_000, "maxFiles": 100},
            "pageCount": pages,
            "successfulPageCount": ok,
            "billing": {"creditsDebited": ok},
            "files": files,
            "resultUrl": result_url if status in WITH_RESULT else None,
            "error": error,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
            "completedAt": iso(self.completed_at),
            "expiresAt": iso(self.expires_at),
        }


def artifact_url(art: Artifact, base: str) -> str:
    """``{base}/jobs/{jobId}/artifact?path=…`` (or the project route for entity artifacts)."""
    scope = (f"projects/{quote(art.project_id, safe='')}" if art.route == "project_artifact"
             else f"jobs/{quote(art.job_id, safe='')}")
    return f"{base}/{scope}/artifact?path={quote(art.path, safe='')}"


def build_result(job: JobState, api_base: str, api_prefix: str) -> bytes:
    """The result document of ``job``, serialised once (UTF-8 JSON, non-ASCII kept raw).

    ``api_base`` is the absolute base URL (``http://127.0.0.1:PORT/api/open/v1``),
    ``api_prefix`` its path (``/api/open/v1``) used for host-relative URLs.
    """
    pages, ok = job.pages()
    docs = job.docs()
    arts = list(job.artifacts.values())

    def ref(a: Artifact) -> dict:
        return {"type": a.spec.type, "url": artifact_url(a, api_base if a.absolute else api_prefix)}

    by_where = {w: [a for a in arts if a.where == w] for w in AUTO_PLACEMENT}
    documents = []
    for n, d in enumerate(docs):
        first = n == 0
        doc = {
            "documentId": d["id"], "fileName": d["name"], "classification":
                "drawing_set" if first else "specification", "contentType": "application/pdf",
            "fileSize": 1_048_576 * (n + 3), "status": "completed" if d["ok"] else "failed",
            "pageCount": d["pages"], "successfulPageCount": d["ok"],
            "failedPageCount": d["pages"] - d["ok"],
            "error": None if d["ok"] else {"code": "document_failed",
                                           "message": "The document could not be read."},
            "artifacts": [ref(a) for a in by_where["document"]] if first else [],
            "sheets": [], "specifications": [], "docs": [],
        }
        if first:
            doc["sheets"] = [
                {"sheetNumber": "A-101", "sheetName": "Ground Floor Plan", "pageNumber": 1,
                 "drawingType": "floor_plan", "discipline": "architectural",
                 "artifacts": [ref(a) for a in by_where["sheet"]]},
                {"sheetNumber": "S-201", "sheetName": "Foundation Details", "pageNumber": 2,
                 "drawingType": "detail", "discipline": "structural", "artifacts": []},
            ]
            doc["specifications"] = [{
                "specificationId": f"spec_{job.id}_1", "sectionNumber": "03 30 00",
                "title": "Cast-in-Place Concrete",
                "sections": [{"sectionId": f"sec_{job.id}_1", "title": "Part 2 - Products",
                              "regions": [{"regionId": f"reg_{job.id}_1", "label": "2.1"}],
                              "artifacts": [ref(a) for a in by_where["entity"]]}],
            }]
        documents.append(doc)
    # Every job-route artifact is also listed as {path, url} (so most paths appear twice;
    # the duplicates use host-relative URLs, as in the docs' example).
    manifest = [a for a in arts if a.route == "artifact"]
    partial = len(docs) > 1
    result = {
        "schemaVersion": "v1",
        "job": {"id": job.id, "externalId": job.external_id, "projectId": job.project_id,
                "status": "completed_with_errors" if partial else "completed",
                "createdAt": iso(job.created_at), "completedAt": iso(job.completed_at),
                "expiresAt": iso(job.expires_at)},
        "usage": {"pageCount": pages, "successfulPageCount": ok,
                  "failedPageCount": pages - ok, "creditsDebited": ok},
        "documents": documents,
        "evidence": [{"evidenceId": f"ev_{job.id}_1", "documentId": docs[0]["id"],
                      "pageNumber": 1, "text": "GROUND FLOOR PLAN 1:100"}],
        "warnings": [{"code": "low_resolution_page", "documentId": docs[0]["id"],
                      "pageNumber": 2, "message": "Page 2 was scanned at 150 dpi."}],
        "errors": [{"code": "document_failed", "documentId": d["id"],
                    "message": "The document could not be read."} for d in docs if not d["ok"]],
        "artifacts": [{"path": a.path, "url": artifact_url(
            a, api_base if a.where == "result" and a.absolute else api_prefix)} for a in manifest],
        "generatedAt": iso(job.completed_at),
    }
    return json.dumps(result, ensure_ascii=False, indent=2).encode("utf-8")
