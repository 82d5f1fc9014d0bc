"""The push-style writer of one GCS object.

Bytes are buffered until they exceed ``simple_upload_threshold``; an object that never
does is sent at commit as one multipart upload with ``ifGenerationMatch=0`` and its
crc32c/md5 in the request, so GCS verifies it and refuses to overwrite. A larger object
opens a resumable session (also ``ifGenerationMatch=0``) and is sent ``chunk_size`` bytes
at a time; commit sends the rest with ``X-Goog-Hash`` and finalises.

Memory per writer: at most ``max(simple_upload_threshold, chunk_size)`` plus the chunk
being written.

No overwrite on the resumable path: real GCS evaluates ``ifGenerationMatch=0`` when the
session starts and again when it finalises. fake-gcs-server ignores it on resumable
uploads, so the writer also looks for an existing object right before the final request;
only a writer that creates the key between that look and the final request can be
overwritten, and only on such a server.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import secrets
from contextlib import contextmanager
from typing import TYPE_CHECKING

from archiver.components import Writer
from archiver.errors import SinkError
from archiver.model import StoredObject

from .client import api_error, google_errors, resource
from .session import CONTENT_TYPE, ObjectExists, ResumableSession

if TYPE_CHECKING:
    from .sink import GCSSink

log = logging.getLogger("archiver_gcs.writer")
TOKEN_PREFIX = "gcs-writer/"


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class GCSWriter(Writer):
    """Writes one object of unknown length; see the module docstring for the protocol.

    ``pending`` is ``gcs-writer/<id>`` from the start and gains `` <session URL>`` once a
    resumable session exists, so that :meth:`GCSSink.discard` can cancel the session.
    """

    def __init__(self, sink: GCSSink, key: str, name: str, metadata: dict[str, str]):
        import google_crc32c

        self._sink, self._key, self._name = sink, key, name
        self._gw = sink.gateway  # every GCS request goes through it
        self._metadata = metadata
        self._where = f"sink {sink.label}: {sink.describe(key)}"
        self._ident = TOKEN_PREFIX + secrets.token_hex(12)
        self._buf = bytearray()
        self._size = 0
        self._crc = google_crc32c.Checksum()
        self._md5 = hashlib.md5() if sink.config.checksum in ("md5", "both") else None
        self._session: ResumableSession | None = None
        self._taken = False  # GCS refused to start an upload: the key already holds an object
        self._state = "open"

    def __repr__(self) -> str:  # never shows the session URL
        return f"<GCSWriter {self._where} {self._state}>"

    @property
    def pending(self) -> str:
        if self._session is not None and not self._session.closed:
            return f"{self._ident} {self._session.url}"
        return self._ident

    # ------------------------------------------------------------------ writing
    def write(self, chunk: bytes) -> None:
        self._check_open("write")
        if not chunk:
            return
        self._crc.update(chunk)
        if self._md5 is not None:
            self._md5.update(chunk)
        self._size += len(chunk)
        if self._taken:
            return  # only the digests matter now: commit compares them with the stored object
        self._buf += chunk
        with self._failing_on_error():
            if self._session is None and len(self._buf) > self._sink.config.simple_upload_threshold:
                self._start_session()
            if self._session is not None:
                self._drain()

    def _start_session(self) -> None:
        blob = self._gw.new_blob(self._name, self._metadata, sha256=None)
        try:
            url = blob.create_resumable_upload_session(
                content_type=CONTENT_TYPE, checksum=None, if_generation_match=0)
        except google_errors() as exc:
            if getattr(exc, "code", None) == 412:
                self._taken, self._buf = True, bytearray()
                return
            raise SinkError(f"{self._where}: could not start a resumable upload: "
                            f"{api_error(exc)}") from None
        self._session = ResumableSession(self._gw.http(), url, self._where)

    def _drain(self) -> None:
        """Send every full chunk in the buffer; keep the rest (less than one chunk)."""
        size = self._sink.config.chunk_size
        while len(self._buf) >= size:
            before = self._session.offset
            with memoryview(self._buf) as whole, whole[:size] as part:
                self._session.send(part)
            sent = self._session.offset - before
            try:
                del self._buf[:sent]
            except BufferError:  # a view of the buffer still lives somewhere: copy instead
                self._buf = self._buf[sent:]

    # ------------------------------------------------------------------ committing
    def commit(self, digests: dict[str, str]) -> StoredObject:
        self._check_open("commit")
        if not digests.get("sha256"):
            raise SinkError(f"{self._where}: commit needs the sha256 digest of the bytes")
        self._state = "committing"
        try:
            with self._failing_on_error():
                if self._taken:
                    stored = self._gw.settle_existing(self._key, digests, self._size)
                elif self._session is None:
                    stored = self._commit_simple(digests)
                else:
                    stored = self._commit_resumable(digests)
        except BaseException:
            self._state = "failed"
            raise
        self._state = "committed"
        self._buf = bytearray()
        return stored

    def _hashes(self) -> tuple[str, str | None]:
        """(crc32c, md5) of the bytes written, base64 as GCS spells them."""
        return b64(self._crc.digest()), (b64(self._md5.digest()) if self._md5 else None)

    def _commit_simple(self, digests: dict[str, str]) -> StoredObject:
        crc, md5 = self._hashes()
        mode = self._sink.config.checksum
        # With retention or holds to apply, sha256 is written with them after verification,
        # so an object without sha256 metadata is recognisably one whose commit was cut short.
        blob = self._gw.new_blob(self._name, self._metadata,
                                 sha256=None if self._sink.config.compliance
                                 else digests["sha256"])
        if mode in ("crc32c", "both"):
            blob.crc32c = crc
        if mode in ("md5", "both"):
            blob.md5_hash = md5
        data, self._buf = bytes(self._buf), bytearray()
        try:
            blob.upload_from_file(io.BytesIO(data), size=len(data), content_type=CONTENT_TYPE,
                                  if_generation_match=0, checksum=None)
        except google_errors() as exc:
            if getattr(exc, "code", None) == 412:
                return self._gw.settle_existing(self._key, digests, self._size)
            raise SinkError(f"{self._where}: upload failed: {api_error(exc)}") from None
        return self._gw.settle_new(self._key, resource(blob), digests, self._size, crc, md5)

    def _commit_resumable(self, digests: dict[str, str]) -> StoredObject:
        self._drain()
        existing = self._gw.get_blob(self._name)
        if existing is not None:
            self._cancel_quietly()
            return self._gw.settle_existing(self._key, digests, self._size, blob=existing)
        crc, md5 = self._hashes()
        mode = self._sink.config.checksum
        hashes = ",".join(h for h in (f"crc32c={crc}" if mode in ("crc32c", "both") else "",
                                      f"md5={md5}" if mode in ("md5", "both") else "") if h)
        try:
            with memoryview(self._buf) as rest:
                props = self._session.send(rest, total=self._size, hashes=hashes)
        except ObjectExists:
            return self._gw.settle_existing(self._key, digests, self._size)
        self._buf = bytearray()
        return self._gw.settle_new(self._key, props, digests, self._size, crc, md5)

    # ------------------------------------------------------------------ aborting
    def abort(self) -> None:
        """Drop the buffer and cancel the resumable session; idempotent, no-op after commit."""
        if self._state == "committed":
            return
        self._state = "aborted"
        self._buf = bytearray()
        if self._session is not None:
            self._session.cancel()  # a SinkError here keeps the pending token for cleanup

    # ------------------------------------------------------------------ helpers
    def _cancel_quietly(self) -> None:
        """Cancel a session we no longer need; if that fails it expires by itself (a week)
        and never becomes visible, so the commit's outcome does not depend on it."""
        try:
            self._session.cancel()
        except SinkError as exc:
            log.warning("%s", exc)

    def _check_open(self, what: str) -> None:
        if self._state != "open":
            raise SinkError(f"{self._where}: cannot {what}: the writer is {self._state}")
        if self._sink.was_discarded(self._ident):
            self._state = "discarded"
            raise SinkError(f"{self._where}: cannot {what}: the writer was discarded "
                            "(its pending upload was cleaned up)")

    @contextmanager
    def _failing_on_error(self):
        """Unexpected SDK/transport errors become SinkError; any failure ends the writer."""
        try:
            yield
        except SinkError:
            self._state = "failed" if self._state == "open" else self._state
            raise
        except google_errors() as exc:
            self._state = "failed" if self._state == "open" else self._state
            raise SinkError(f"{self._where}: {api_error(exc)}") from None
