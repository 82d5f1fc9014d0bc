"""Sink operations shared by bag writing, fixity audits and replication.

Everything goes through the ordinary sink contract (``open_writer``/``commit``,
``open_read``, ``stat``), plus two optional methods proposed for
:class:`archiver.components.Sink`:

* ``list_keys(prefix) -> Iterable[str]``: the keys below ``prefix`` (sink-relative),
  to find payload files nobody recorded. The S3 and GCS sinks have it; the local sink is
  listed here by walking its root (its module is not ours to change).
* ``retention(key) -> dict | None``: what retention an object written now would receive
  (S3 Object Lock, GCS object retention and holds), without any I/O.

Memory: streams are hashed chunk by chunk; only tag files (small, built by archiver) are
held whole, and :func:`read_small` refuses objects above :data:`SMALL_LIMIT`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator

from ..components import Sink
from ..errors import ArchiverError, SinkError
from ..model import StoredObject

log = logging.getLogger("archiver.compliance")

SMALL_LIMIT = 256 << 20
# Temporary files of the local sink's writers (see archiver/default_plugins/local.py).
_LOCAL_TEMP = re.compile(r"\..*\.%%[0-9a-f]{16}\.partial", re.DOTALL)


class DigestMismatch(ArchiverError):
    """The bytes streamed are not the bytes expected; nothing was committed."""


def hashers(algorithms: Iterable[str]) -> dict[str, hashlib._Hash]:
    return {a: hashlib.new(a) for a in dict.fromkeys(["sha256", *algorithms])}


def hash_object(sink: Sink, key: str, algorithms: Iterable[str] = ()) -> tuple[int, dict[str, str]]:
    """``(size, digests)`` of the stored bytes, streamed through ``open_read``."""
    hs, size = hashers(algorithms), 0
    with sink.open_read(key) as chunks:
        for chunk in chunks:
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
               expect: dict[str, str] | None = None) -> StoredObject:
    """Write ``chunks`` at ``key`` through the sink's ordinary writer, hashing on the way.

    When ``expect`` is given, every digest in it must match the bytes streamed or the
    writer is aborted (:class:`DigestMismatch`) before anything becomes visible. The
    writer's pending token is recorded in the ledger while it is open, as the pipeline
    does, so a crash leaves nothing that ``archiver cleanup`` cannot find.
    ``ConflictError`` (different bytes at the key) propagates; the stored object is
    untouched.
    """
    hs = hashers([*algorithms, *(expect or {})])
    writer = sink.open_writer(key, {"job-id": job_id})
    pending_id, token = None, None

    def track() -> None:
        nonlocal pending_id, token
        if writer.pending == token:
            return
        token = writer.pending
        if pending_id is None:
            pending_id = ledger.add_pending(sink.label, token, job_id, path)
        else:
            ledger.update_pending(pending_id, token)

    size = 0
    try:
        track()
        for chunk in chunks:
            for h in hs.values():
                h.update(chunk)
            writer.write(chunk)
            size += len(chunk)
            track()
        digests = {a: h.hexdigest() for a, h in hs.items()}
        wrong = {a: v for a, v in (expect or {}).items() if digests.get(a) != v}
        if wrong:
            raise DigestMismatch(", ".join(f"{a} {digests[a]}, expected {v}"
                                           for a, v in wrong.items()))
        stored = writer.commit(digests)
    except BaseException:
        try:
            writer.abort()
        except Exception:  # the pending record stays; cleanup retries
            log.exception("sink %s: abort of %s failed", sink.label, key)
            raise
        if pending_id is not None:
            ledger.remove_pending(pending_id)
        raise
    if pending_id is not None:
        ledger.remove_pending(pending_id)
    if stored.size != size or (stored.digests.get("sha256")
                               and stored.digests["sha256"] != digests["sha256"]):
        raise SinkError(f"sink {sink.label!r}: {sink.describe(key)}: verification after "
                        f"commit failed: stored {stored.size} bytes, wrote {size}")
    stored.digests = {**digests, **stored.digests}
    return stored


def put_bytes(sink: Sink, ledger, key: str, data: bytes, *, job_id: str, path: str,
              algorithms: Iterable[str] = ()) -> StoredObject:
    return put_stream(sink, ledger, key, [data], job_id=job_id, path=path,
                      algorithms=algorithms)


def list_keys(sink: Sink, prefix: str) -> list[str] | None:
    """Sorted keys below ``prefix``, or None when the sink cannot list."""
    method = getattr(sink, "list_keys", None)
    keys = method(prefix) if callable(method) else None  # proposed base default: None
    if keys is not None:
        return sorted(keys)
    from ..default_plugins.local import LocalSink
    if isinstance(sink, LocalSink):
        return sorted(_walk_local(sink, prefix))
    return None


def _walk_local(sink, prefix: str) -> Iterator[str]:
    top = os.path.join(sink.root, *[s for s in prefix.split("/") if s])
    if not os.path.isdir(top):
        return

    def fail(exc: OSError) -> None:
        raise SinkError(f"sink {sink.label!r}: cannot list {exc.filename}: "
                        f"{exc.strerror}") from exc

    for dirpath, _dirs, files in os.walk(top, onerror=fail):  # never follows symlinks
        rel = os.path.relpath(dirpath, sink.root).replace(os.sep, "/")
        for name in files:
            if not _LOCAL_TEMP.fullmatch(name):
                yield name if rel == "." else f"{rel}/{name}"


def retention(sink: Sink, key: str) -> dict | None:
    """What retention an object written at ``key`` now would receive (no I/O)."""
    method = getattr(sink, "retention", None)
    if callable(method):
        return method(key)
    if getattr(getattr(sink, "config", None), "read_only", False):
        return {"mode": "read-only file (0444); no enforced retention"}
    return None
