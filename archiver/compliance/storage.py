"""Sink operations shared by bag writing, fixity audits and replication.

Everything goes through the ordinary sink contract (``open_writer``/``commit``,
``open_read``, ``stat``, ``list_keys``) and :class:`archiver.tracked.TrackedWriter`.

Memory: streams are hashed chunk by chunk; only tag files (small, built by archiver) are
held whole, and :func:`read_small` refuses objects above :data:`SMALL_LIMIT`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

from ..components import Sink
from ..errors import ArchiverError, SinkError
from ..model import StoredObject
from ..tracked import TrackedWriter

log = logging.getLogger("archiver.compliance")

SMALL_LIMIT = 256 << 20


class DigestMismatch(ArchiverError):
    """The bytes streamed are not the bytes expected; nothing was committed."""


def hashers(algorithms: Iterable[str]) -> dict[str, hashlib._Hash]:
    return {a: hashlib.new(a) for a in dict.fromkeys(["sha256", *algorithms])}


def hash_object(sink: Sink, key: str, algorithms: Iterable[str] = (), *,
                progress=None, job: str = "", total: int | None = None
                ) -> tuple[int, dict[str, str]]:
    """``(size, digests)`` of the stored bytes, streamed through ``open_read``;
    ``progress``: an ``on_progress`` callback for the bytes read (throttled)."""
    from ..progress import metered
    hs, size = hashers(algorithms), 0
    with sink.open_read(key) as chunks:
        for chunk in metered(chunks, progress, job, key, total):
            size += len(chunk)
            for h in hs.values():
                h.update(chunk)
    return size, {a: h.hexdigest() for a, h in hs.items()}


def read_small(sink: Sink, key: str, limit: int = SMALL_LIMIT) -> bytes | None:
    """A small object's bytes (tag files), or None when there is no object at ``key``."""
    if sink.stat(key) is None:
        return None
    out = bytearray()
    with sink.open_read(key) as chunks:
        for chunk in chunks:
            out += chunk
            if len(out) > limit:
                raise SinkError(f"sink {sink.label!r}: {sink.describe(key)} is larger than "
                                f"{limit} bytes; not a tag file archiver wrote")
    return bytes(out)


def put_stream(sink: Sink, ledger, key: str, chunks: Iterable[bytes], *, job_id: str,
               path: str, algorithms: Iterable[str] = (),
               expect: dict[str, str] | None = None,
               committed: list[TrackedWriter] | None = None) -> StoredObject:
    """Write ``chunks`` at ``key`` through the sink's ordinary writer, hashing on the way.

    When ``expect`` is given, every digest in it must match the bytes streamed or the
    writer is aborted (:class:`DigestMismatch`) before anything becomes visible. The
    writer's pending token is recorded in the ledger while it is open, as the pipeline
    does, so a crash leaves nothing that ``archiver cleanup`` cannot find.
    ``ConflictError`` (different bytes at the key) propagates; the stored object is
    untouched. ``committed``: the committed writer is appended to it and its pending
    record is left for the caller to drop (``forget()``) in the transaction that records
    the object, instead of one transaction of its own.
    """
    hs = hashers([*algorithms, *(expect or {})])
    writer = TrackedWriter(sink, ledger, key, job_id=job_id, path=path,
                           metadata={"job-id": job_id})
    try:
        for chunk in chunks:
            for h in hs.values():
                h.update(chunk)
            writer.write(chunk)
        digests = {a: h.hexdigest() for a, h in hs.items()}
        wrong = {a: v for a, v in (expect or {}).items() if digests.get(a) != v}
        if wrong:
            raise DigestMismatch(", ".join(f"{a} {digests[a]}, expected {v}"
                                           for a, v in wrong.items()))
        stored = writer.commit(digests, forget=committed is None)
        if committed is not None:
            committed.append(writer)
    except BaseException:
        writer.abort()
        raise
    size = writer.written
    if stored.size != size or (stored.digests.get("sha256")
                               and stored.digests["sha256"] != digests["sha256"]):
        raise SinkError(f"sink {sink.label!r}: {sink.describe(key)}: verification after "
                        f"commit failed: stored {stored.size} bytes, wrote {size}")
    stored.digests = {**digests, **stored.digests}
    return stored


def put_bytes(sink: Sink, ledger, key: str, data: bytes, *, job_id: str, path: str,
              algorithms: Iterable[str] = (),
              committed: list[TrackedWriter] | None = None) -> StoredObject:
    return put_stream(sink, ledger, key, [data], job_id=job_id, path=path,
                      algorithms=algorithms, committed=committed)


def list_keys(sink: Sink, prefix: str) -> list[str] | None:
    """Sorted keys below ``prefix``, or None when the sink cannot list."""
    keys = sink.list_keys(prefix)
    return None if keys is None else sorted(keys)
