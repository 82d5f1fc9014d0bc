"""Push-style writer of one S3 object: one PutObject, or a bounded multipart upload.

Bytes are buffered up to ``multipart_threshold``. If the object ends below it, ``commit``
sends one PutObject. On the first byte beyond it the writer creates a multipart upload and
from then on cuts ``part_size`` parts, uploading at most ``max_parts_in_flight`` at once on
a small thread pool; ``write`` blocks while that many are in flight, so one writer holds at
most ``max(multipart_threshold, part_size) + max_parts_in_flight * part_size`` bytes. Part
buffers are allocated once and reused, and reach boto3 as seekable views
(:class:`~archiver_s3.body.BufferBody`), which it signs and sends without copying.

boto3's ``upload_fileobj`` is not used: it pulls from a file object and, fed a stream with
short reads, silently falls back to a single PutObject. Both PutObject and
CompleteMultipartUpload carry ``If-None-Match: *``, so an existing object is never
replaced; the gateway then compares digests (identical: ``existed=True``; different:
:class:`~archiver.errors.ConflictError`).

``abort`` may run on another thread (a signal handler's path) while ``write`` or
``commit`` is in progress: it wakes a ``write`` waiting for a free part slot, aborts the
multipart upload, waits for parts still in flight and aborts once more, as S3 advises for
parts that finish after an abort.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from contextlib import nullcontext
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from archiver import cancel
from archiver.components import Writer
from archiver.errors import ArchiverError, SinkError
from archiver.model import StoredObject

from . import awserrors, checksums
from .awserrors import RetryableSinkError
from .config import MAX_PARTS, SHA256_METADATA

if TYPE_CHECKING:
    from .sink import S3Sink

log = logging.getLogger("archiver_s3.writer")


class S3Writer(Writer):
    """Writes one object at ``key``; see the module docstring for the protocol.

    ``stats`` counts what the memory bound is about: ``in_flight`` parts right now,
    ``max_in_flight`` ever, ``waits`` (times ``write`` blocked for a free slot) and
    ``parts`` uploaded.
    """

    def __init__(self, sink: "S3Sink", key: str, full_key: str, metadata: dict[str, str]):
        cfg = sink.config
        self._sink, self.key, self.full_key = sink, key, full_key
        self._gw = sink.gateway  # every S3 request goes through it
        self._bucket = cfg.bucket
        self._part_size, self._threshold = cfg.part_size, cfg.multipart_threshold
        self._max_in_flight = cfg.max_parts_in_flight
        self._algorithm = cfg.checksum_algorithm
        self._metadata = metadata
        self._cond = threading.Condition()
        self._state = "open"   # open | committing | committed | failed | aborted | discarded
        self._buf = bytearray()  # below the threshold: the object so far; then: one part
        self._fill = 0  # bytes of the current part in _buf (multipart phase)
        self._free: list[bytearray] = []  # part buffers uploaded parts gave back
        self._running = checksums.Running(self._algorithm)
        self.size = 0
        self._upload_id: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._parts: dict[int, dict[str, Any]] = {}
        self._part_digests: dict[int, bytes] = {}
        self._next_part = 1
        self._error: BaseException | None = None
        self._nonce = secrets.token_hex(8)
        self._lock = None  # the Object Lock the upload asked for (gateway.Lock), if any
        self.stats = {"in_flight": 0, "max_in_flight": 0, "waits": 0, "parts": 0}
        # The stop of whoever opened the writer also cuts the parts it sends on pool
        # threads (archiver.cancel): captured here, re-entered on each part's thread.
        self._canceller = cancel.current()

    def __repr__(self) -> str:
        return f"S3Writer({self._gw.describe(self.key)!r}, state={self._state})"

    # ------------------------------------------------------------------ token
    @property
    def pending(self) -> str:
        """JSON naming bucket, key, this writer and (once created) the multipart UploadId."""
        token = {"bucket": self._bucket, "key": self.full_key, "writer": self._nonce}
        if self._upload_id:
            token["upload_id"] = self._upload_id
        return json.dumps(token, sort_keys=True)

    @property
    def nonce(self) -> str:
        return self._nonce

    @property
    def upload_id(self) -> str | None:
        return self._upload_id

    # ------------------------------------------------------------------ helpers
    def _where(self) -> str:
        return f"sink {self._gw.label!r}: key {self.key!r} ({self._gw.describe(self.key)})"

    def _check_open(self, action: str) -> None:
        if self._state != "open":
            raise SinkError(f"{self._where()}: cannot {action}: the writer is {self._state}")
        if self._error is not None:
            raise self._part_failure()

    def _part_failure(self) -> SinkError:
        exc = self._error
        if isinstance(exc, ArchiverError):
            kind = RetryableSinkError if getattr(exc, "retryable", False) else SinkError
            named = str(exc).startswith(f"sink {self._gw.label!r}: key {self.key!r}")
            return kind(str(exc) if named else f"{self._where()}: {exc}")
        return self._sink_error("uploading a part", exc)

    def _sink_error(self, action: str, exc: BaseException) -> SinkError:
        if isinstance(exc, SinkError):  # worded by the gateway already
            return type(exc)(str(exc))
        kind = RetryableSinkError if awserrors.is_transport(exc) else SinkError
        return kind(f"{self._where()}: {action} failed: {awserrors.describe(exc)}")

    # ------------------------------------------------------------------ writing
    def write(self, chunk: bytes) -> None:
        with self._cond:
            self._check_open("write")
        if not chunk:
            return
        self._running.update(chunk)
        self.size += len(chunk)
        if self._upload_id is None:
            self._buf += chunk
            if len(self._buf) > self._threshold:
                self._start_multipart()
                self._cut_buffered_parts()
            return
        view = memoryview(chunk).cast("B")
        while view:
            n = min(self._part_size - self._fill, len(view))
            self._buf[self._fill:self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == self._part_size:
                part, self._buf, self._fill = self._buf, self._spare(), 0
                self._submit(part)

    def _spare(self) -> bytearray:
        """A part-sized buffer: one an uploaded part gave back, else a new one. Reusing
        them keeps memory at the declared bound; growing and dropping a new buffer per
        part measured about twice the bound in RSS (the allocator keeps freed blocks)."""
        with self._cond:
            if self._free:
                return self._free.pop()
        return bytearray(self._part_size)

    def _start_multipart(self) -> None:
        try:
            self._lock = self._gw.wanted_lock()  # counted from the start of the upload
            upload_id = self._gw.start_upload(self.full_key, self._metadata, self._lock)
        except Exception as exc:
            with self._cond:
                if self._state == "open":
                    self._state = "failed"
            raise self._sink_error("starting the multipart upload", exc) from exc
        with self._cond:
            lost = self._state != "open"
            if not lost:
                self._upload_id = upload_id
                self._pool = ThreadPoolExecutor(self._max_in_flight,
                                                thread_name_prefix="archiver-s3-part")
        if lost:  # abort() ran on another thread while the upload was being created
            self._gw.abort_upload(self._bucket, self.full_key, upload_id)
            raise SinkError(f"{self._where()}: cannot write: the writer is {self._state}")
        log.debug("%s: multipart upload %s started", self._where(), upload_id)

    def _cut_buffered_parts(self) -> None:
        """After the threshold overflowed: send every whole part the buffer holds. The
        buffer itself becomes the first part (cut in place); the others are copied into
        part buffers, and so is what remains."""
        data = self._buf
        full = len(data) // self._part_size * self._part_size
        with memoryview(data) as view:
            rest = []
            for start in range(self._part_size, full, self._part_size):
                part = self._spare()
                part[:] = view[start:start + self._part_size]
                rest.append(part)
            self._buf, self._fill = self._spare(), len(data) - full
            self._buf[:self._fill] = view[full:]
        if full:
            del data[self._part_size:]
            self._submit(data)
        for part in rest:
            self._submit(part)

    def _submit(self, part: bytes | bytearray) -> None:
        with self._cond:
            if self.stats["in_flight"] >= self._max_in_flight:
                self.stats["waits"] += 1
            while (self.stats["in_flight"] >= self._max_in_flight and self._state
                   in ("open", "committing") and self._error is None):
                self._cond.wait()
            pool = self._pool
            if self._state not in ("open", "committing") or pool is None:
                raise SinkError(f"{self._where()}: cannot write: the writer is {self._state}")
            if self._error is not None:
                raise self._part_failure()
            number = self._next_part
            if number > MAX_PARTS:
                raise SinkError(f"{self._where()}: the object needs more than {MAX_PARTS} "
                                f"parts of {self._part_size} bytes; raise part_size")
            self._next_part += 1
            self.stats["in_flight"] += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"],
                                              self.stats["in_flight"])
        try:
            future = pool.submit(self._upload_part, number, part)
        except RuntimeError as exc:  # the pool was shut down by a concurrent abort
            with self._cond:
                self.stats["in_flight"] -= 1
                self._cond.notify_all()
            raise SinkError(f"{self._where()}: cannot write: the writer is "
                            f"{self._state}") from exc
        future.add_done_callback(self._part_done)  # also runs for cancelled parts

    def _part_done(self, future: Future) -> None:
        with self._cond:
            self.stats["in_flight"] -= 1
            if not future.cancelled() and future.exception() is not None \
                    and self._error is None:
                self._error = future.exception()
            self._cond.notify_all()

    def _upload_part(self, number: int, data: bytes | bytearray) -> None:
        if self._state not in ("open", "committing") or self._error is not None:
            return
        scope = self._canceller.scope() if self._canceller is not None else nullcontext()
        with scope:
            entry, digest = self._gw.upload_part(self.full_key, self._upload_id, number, data)
        with self._cond:
            self._parts[number] = entry
            self._part_digests[number] = digest
            self.stats["parts"] += 1
            if (len(data) == self._part_size and len(self._free) < self._max_in_flight
                    and self._state in ("open", "committing")):
                self._free.append(data)  # boto3 is done with it: write() may refill it

    def _drain(self) -> None:
        """Wait until no part is in flight; raise the first part failure."""
        with self._cond:
            while self.stats["in_flight"] and self._state == "committing" \
                    and self._error is None:
                self._cond.wait()
            if self._state != "committing":
                raise SinkError(f"{self._where()}: cannot commit: the writer is {self._state}")
            if self._error is not None:
                raise self._part_failure()

    # ------------------------------------------------------------------ commit
    def commit(self, digests: dict[str, str]) -> StoredObject:
        with self._cond:
            self._check_open("commit")
            self._state = "committing"
        try:
            stored = self._commit(digests or {})
        except BaseException:
            with self._cond:
                if self._state == "committing":
                    self._state = "failed"
                self._cond.notify_all()
            raise
        with self._cond:
            if self._state == "committing":
                self._state = "committed"
        self._finish()
        return stored

    def _commit(self, digests: dict[str, str]) -> StoredObject:
        sha256 = str(digests.get("sha256", "")).lower()
        if not sha256:
            raise SinkError(f"{self._where()}: cannot commit without a sha256 digest")
        ours = self._running.sha256.hexdigest()
        if ours != sha256:
            raise SinkError(f"{self._where()}: the bytes written have sha256 {ours}, not the "
                            f"{sha256} given to commit; nothing was stored")
        if self._upload_id is None:
            return self._put(sha256, digests)
        return self._complete(sha256, digests)

    def _put(self, sha256: str, digests: dict[str, str]) -> StoredObject:
        expected = self._running.full_object()
        body, self._buf = self._buf, bytearray()  # handed over whole: no copy
        self._lock = self._gw.wanted_lock()
        try:
            resp = self._gw.put_new(self.full_key, body,
                                    {**self._metadata, SHA256_METADATA: sha256}, expected,
                                    self._lock)
        except Exception as exc:
            raise self._sink_error("PutObject", exc) from exc
        if resp is None:  # the key is taken: same bytes or a conflict
            return self._gw.match_existing(self.key, sha256, digests)
        log.debug("%s: stored with one PutObject (%d bytes)", self._where(), len(body))
        return self._gw.verify_stored(self.key, resp, digests, expected, "FULL_OBJECT",
                                      self.size, self._lock)

    def _complete(self, sha256: str, digests: dict[str, str]) -> StoredObject:
        if self._fill or self._next_part == 1:
            part, self._buf = self._buf, bytearray()
            del part[self._fill:]  # the last part: shrunk in place, not copied
            self._fill = 0
            self._submit(part)
        self._drain()
        parts = [self._parts[n] for n in sorted(self._parts)]
        kind = checksums.multipart_type(self._algorithm)
        name = f"Checksum{self._algorithm}"
        if kind == "FULL_OBJECT":
            expected = self._running.full_object()
            extra = {"ChecksumType": kind, name: expected}
        else:
            expected = checksums.composite(
                self._algorithm, [self._part_digests[n] for n in sorted(self._part_digests)])
            extra = {}
        try:
            resp = self._gw.complete_new(self.full_key, self._upload_id, parts, self.size,
                                         extra)
        except Exception as exc:
            raise self._sink_error("CompleteMultipartUpload", exc) from exc
        if resp is None:  # the key is taken: same bytes or a conflict
            stored = self._gw.match_existing(self.key, sha256, digests)
            self._abort_upload()  # ours is not needed: the same bytes are there
            return stored
        log.debug("%s: multipart upload %s completed (%d parts)", self._where(),
                  self._upload_id, len(parts))
        self._gw.tag_sha256(self.key, resp.get("VersionId"), sha256)
        return self._gw.verify_stored(self.key, resp, digests, expected, kind, self.size,
                                      self._lock)

    # ------------------------------------------------------------------ abort
    def abort(self) -> None:
        """Drop everything this writer sent; safe from any thread, idempotent, and a
        no-op after a successful commit."""
        self._stop("aborted")

    def discard(self) -> None:
        """As :meth:`abort`, for ``Sink.discard``: a later ``commit`` fails."""
        self._stop("discarded")

    def _stop(self, state: str) -> None:
        with self._cond:
            if self._state in ("committed", "aborted", "discarded"):
                return
            self._state = state
            self._cond.notify_all()  # wakes a write() waiting for a part slot
            busy = self.stats["in_flight"] > 0
            self._free.clear()
        self._buf, self._fill = bytearray(), 0
        try:
            if self._upload_id:
                self._abort_upload()
                if busy:
                    with self._cond:
                        while self.stats["in_flight"]:
                            self._cond.wait()
                    self._abort_upload()  # parts that finished after the first abort
        finally:
            self._finish()

    def _abort_upload(self) -> None:
        if self._upload_id:
            self._gw.abort_upload(self._bucket, self.full_key, self._upload_id)

    def _finish(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self._sink.forget(self)

