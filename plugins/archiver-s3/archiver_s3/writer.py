"""Push-style writer of one S3 object: one PutObject, or a bounded multipart upload.

The part machinery (state, running sha256, bounded pool, failures, abort, stops) is the
core's :class:`archiver.parts.PartedWriter`; this module supplies S3's requests. Bytes
are buffered up to ``multipart_threshold``. If the object ends below it, ``commit`` sends
one PutObject. On the first byte beyond it the writer creates a multipart upload and from
then on cuts ``part_size`` parts, uploading at most ``max_parts_in_flight`` at once, so
one writer holds at most ``max(multipart_threshold, part_size) + max_parts_in_flight *
part_size`` bytes. Part buffers reach boto3 as seekable views
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
from typing import TYPE_CHECKING, Any

from archiver.errors import ArchiverError, SinkError
from archiver.model import StoredObject
from archiver.parts import PartedWriter

from . import awserrors, checksums
from .awserrors import RetryableSinkError
from .config import MAX_PARTS, SHA256_METADATA

if TYPE_CHECKING:
    from .sink import S3Sink

log = logging.getLogger("archiver_s3.writer")


class S3Writer(PartedWriter):
    """Writes one object at ``key``; see the module docstring for the protocol.

    ``stats`` (from :class:`~archiver.parts.PartedWriter`) counts what the memory bound is
    about: ``in_flight`` parts right now, ``max_in_flight`` ever, ``waits`` (times
    ``write`` blocked for a free slot) and ``parts`` uploaded.
    """

    def __init__(self, sink: "S3Sink", key: str, full_key: str, metadata: dict[str, str]):
        cfg = sink.config
        # One pass over the bytes for both: the sha256 commit checks and S3's checksum.
        super().__init__(part_size=cfg.part_size, max_in_flight=cfg.max_parts_in_flight,
                         threshold=cfg.multipart_threshold, max_parts=MAX_PARTS,
                         running=checksums.Running(cfg.checksum_algorithm),
                         thread_name="archiver-s3-part")
        self._algorithm = cfg.checksum_algorithm
        self._sink, self.key, self.full_key = sink, key, full_key
        self._gw = sink.gateway  # every S3 request goes through it
        self._bucket = cfg.bucket
        self._metadata = metadata
        self._upload_id: str | None = None
        self._nonce = secrets.token_hex(8)
        self._lock = None  # the Object Lock the upload asked for (gateway.Lock), if any

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

    def _part_error(self, exc: BaseException) -> SinkError:
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

    # ------------------------------------------------------------------ parts
    def _start(self) -> None:
        try:
            self._lock = self._gw.wanted_lock()  # counted from the start of the upload
            self._upload_id = self._gw.start_upload(self.full_key, self._metadata, self._lock)
        except Exception as exc:
            raise self._sink_error("starting the multipart upload", exc) from exc
        log.debug("%s: multipart upload %s started", self._where(), self._upload_id)

    def _upload_part(self, index: int, data: bytearray) -> tuple[dict[str, Any], bytes]:
        # S3 numbers parts from 1; the entry (ETag, checksum) goes into the Complete call.
        return self._gw.upload_part(self.full_key, self._upload_id, index + 1, data)

    # ------------------------------------------------------------------ commit
    def _put_whole(self, body: bytearray, sha256: str,
                   digests: dict[str, str]) -> StoredObject:
        expected = self._running.full_object()
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

    def _complete(self, uploaded: list[tuple[dict[str, Any], bytes]], sha256: str,
                  digests: dict[str, str]) -> StoredObject:
        parts = [entry for entry, _ in uploaded]
        kind = checksums.multipart_type(self._algorithm)
        name = f"Checksum{self._algorithm}"
        if kind == "FULL_OBJECT":
            expected = self._running.full_object()
            extra = {"ChecksumType": kind, name: expected}
        else:
            expected = checksums.composite(self._algorithm, [d for _, d in uploaded])
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
    def _abort_remote(self) -> None:
        if not self._upload_id:
            return
        busy = self.stats["in_flight"] > 0  # read after the state change: no part starts now
        self._abort_upload()  # first, so parts in flight fail fast instead of finishing
        if busy:
            self._wait_idle()
            self._abort_upload()  # parts that finished after the first abort

    def _abort_upload(self) -> None:
        if self._upload_id:
            self._gw.abort_upload(self._bucket, self.full_key, self._upload_id)

    def _closed(self) -> None:
        self._sink.forget(self)
