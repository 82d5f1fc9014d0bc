"""Push-style writer of one block blob: one Put Blob, or staged blocks and one Put Block List.

Bytes are buffered up to ``block_size``. An object that ends there is sent with one Put
Blob. On the first byte beyond it the writer stages ``block_size`` blocks (Put Block),
at most ``max_blocks_in_flight`` at once on a small per-writer pool; ``write`` blocks
while that many are in flight, so a writer holds at most ``block_size × (1 +
max_blocks_in_flight)`` bytes. Staged blocks are invisible: the blob appears only when
``commit`` sends Put Block List. Both Put Blob and Put Block List carry
``If-None-Match: *``, so an existing blob is never replaced; the sink then compares
digests (identical: ``existed=True``; different: ConflictError).

Every block carries its own Content-MD5, which the service verifies before accepting
it; the whole blob's MD5 goes in ``x-ms-blob-content-md5`` and our sha256 in the
metadata, both set in the same request that makes the blob visible.

Block ids are ``<writer nonce><index>`` (same length for every block, as Azure
requires), so writers racing on one name never use each other's blocks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from typing import TYPE_CHECKING

from archiver import cancel
from archiver.components import Writer
from archiver.errors import ArchiverError, SinkError
from archiver.model import StoredObject

from .client import RetryableSinkError
from .config import MAX_BLOCKS

if TYPE_CHECKING:
    from .sink import AzureSink

log = logging.getLogger("archiver_azure.writer")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class AzureWriter(Writer):
    """Writes one blob at ``key``; ``stats`` counts blocks in flight (the memory bound)."""

    def __init__(self, sink: "AzureSink", key: str, name: str, metadata: dict[str, str]):
        cfg = sink.config
        self._sink, self.key, self.name = sink, key, name
        self._store = sink.store
        self._block_size, self._max_in_flight = cfg.block_size, cfg.max_blocks_in_flight
        self._metadata = metadata
        self._cond = threading.Condition()
        self._state = "open"  # open | committing | committed | failed | aborted | discarded
        self._buf = bytearray()
        self._sha256, self._md5 = hashlib.sha256(), hashlib.md5()
        self.size = 0
        self._blocks: list[str] = []                 # block ids, in order
        self._block_md5: dict[int, bytes] = {}
        self._staged = False                          # a block may exist at the service
        self._pool: ThreadPoolExecutor | None = None
        self._error: BaseException | None = None
        self.nonce = secrets.token_hex(8)
        self.stats = {"in_flight": 0, "max_in_flight": 0, "waits": 0, "blocks": 0}
        # The stop of whoever opened the writer also cuts the blocks its pool sends.
        self._canceller = cancel.current()

    def __repr__(self) -> str:
        return f"AzureWriter({self._store.describe(self.key)!r}, state={self._state})"

    @property
    def pending(self) -> str:
        """JSON naming account, container, blob and this writer: enough for ``discard``
        to remove the staged blocks (they live under the blob's name, not an upload id)."""
        return json.dumps({"account": self._store.account, "container": self._store.container,
                           "blob": self.name, "writer": self.nonce}, sort_keys=True)

    def _where(self) -> str:
        return self._store.where(self.key)

    def _check_open(self, action: str) -> None:
        if self._state != "open":
            raise SinkError(f"{self._where()}: cannot {action}: the writer is {self._state}")
        if self._error is not None:
            raise self._block_failure()

    def _block_failure(self) -> SinkError:
        exc = self._error
        if isinstance(exc, ArchiverError):
            return exc if isinstance(exc, SinkError) else SinkError(f"{self._where()}: {exc}")
        return self._store.error("Put Block", exc, self.key)

    # ------------------------------------------------------------------ writing
    def write(self, chunk: bytes) -> None:
        with self._cond:
            self._check_open("write")
        if not chunk:
            return
        self._sha256.update(chunk)
        self._md5.update(chunk)
        self.size += len(chunk)
        self._buf += chunk
        # Stage only once there is more than one block: an object that fits in one goes
        # out whole with Put Blob (one request; the service verifies its MD5 itself).
        while len(self._buf) > self._block_size:
            block = bytes(memoryview(self._buf)[:self._block_size])
            del self._buf[:self._block_size]
            self._submit(block)

    def _submit(self, block: bytes) -> None:
        with self._cond:
            if self.stats["in_flight"] >= self._max_in_flight:
                self.stats["waits"] += 1
            while (self.stats["in_flight"] >= self._max_in_flight and self._error is None
                   and self._state in ("open", "committing")):
                self._cond.wait()
            if self._state not in ("open", "committing"):
                raise SinkError(f"{self._where()}: cannot write: the writer is {self._state}")
            if self._error is not None:
                raise self._block_failure()
            index = len(self._blocks)
            if index >= MAX_BLOCKS:
                raise SinkError(f"{self._where()}: the blob needs more than {MAX_BLOCKS} "
                                f"blocks of {self._block_size} bytes; raise block_size")
            block_id = b64(f"{self.nonce}{index:06d}".encode())
            self._blocks.append(block_id)
            self._staged = True
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_in_flight,
                                                thread_name_prefix="archiver-azure-block")
            self.stats["in_flight"] += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"],
                                              self.stats["in_flight"])
            pool = self._pool
        try:
            future = pool.submit(self._stage, index, block_id, block)
        except RuntimeError as exc:  # shut down by a concurrent abort
            with self._cond:
                self.stats["in_flight"] -= 1
                self._cond.notify_all()
            raise SinkError(f"{self._where()}: cannot write: the writer is "
                            f"{self._state}") from exc
        future.add_done_callback(self._block_done)

    def _stage(self, index: int, block_id: str, block: bytes) -> None:
        if self._state not in ("open", "committing") or self._error is not None:
            return
        digest = hashlib.md5(block).digest()
        scope = self._canceller.scope() if self._canceller is not None else nullcontext()
        with scope:
            self._store.stage_block(self.name, block_id, block, digest)
        with self._cond:
            self._block_md5[index] = digest
            self.stats["blocks"] += 1

    def _block_done(self, future: Future) -> None:
        with self._cond:
            self.stats["in_flight"] -= 1
            if not future.cancelled() and future.exception() is not None \
                    and self._error is None:
                self._error = future.exception()
            self._cond.notify_all()

    def _drain(self) -> None:
        with self._cond:
            while self.stats["in_flight"] and self._state == "committing" \
                    and self._error is None:
                self._cond.wait()
            if self._state != "committing":
                raise SinkError(f"{self._where()}: cannot commit: the writer is {self._state}")
            if self._error is not None:
                raise self._block_failure()

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
        ours = self._sha256.hexdigest()
        if ours != sha256:
            raise SinkError(f"{self._where()}: the bytes written have sha256 {ours}, not the "
                            f"{sha256} given to commit; nothing was stored")
        md5 = self._md5.digest()
        wanted = self._store.wanted_immutability()  # counted from now, sent with the bytes
        if not self._staged:
            body, self._buf = bytes(self._buf), bytearray()
            created = self._store.put_new(self.key, self.name, body, md5, sha256,
                                          self._metadata, wanted)
            block_checksum = None
        else:
            if self._buf:
                block, self._buf = bytes(self._buf), bytearray()
                self._submit(block)
            self._drain()
            created = self._store.commit_new(self.key, self.name, self._blocks, md5, sha256,
                                             self._metadata, wanted)
            composite = hashlib.md5(b"".join(self._block_md5[i]
                                             for i in range(len(self._blocks)))).digest()
            block_checksum = {"algorithm": "MD5", "type": "PER_BLOCK", "verified": "service",
                              "blocks": len(self._blocks), "block_size": self._block_size,
                              "composite": b64(composite)}
        if created is None:  # the name is taken: the same bytes, or a conflict
            stored = self._store.match_existing(self.key, self.name, sha256, self.size,
                                                digests)
            log.debug("%s: found at the key already (existed=True)", self._where())
            return stored
        # Put Blob: the service checked the whole body's MD5. Put Block List: it checked
        # every block's MD5; the whole-blob MD5 is ours, stored as sent.
        stored = self._store.confirm(self.key, self.name, digests, md5, self.size, wanted,
                                     "client" if block_checksum else "service")
        if block_checksum:
            stored.extra["block_checksum"] = block_checksum
        return stored

    # ------------------------------------------------------------------ abort
    def abort(self) -> None:
        """Drop what this writer staged; any thread, idempotent, a no-op after commit.
        Raises RetryableSinkError when the service cannot be reached to remove staged
        blocks (the core then keeps the pending token for ``Sink.discard``)."""
        self._stop("aborted")

    def discard(self) -> None:
        """As :meth:`abort`, for ``Sink.discard``: a later ``commit`` fails."""
        self._stop("discarded")

    def _stop(self, state: str) -> None:
        with self._cond:
            if self._state in ("committed", "aborted", "discarded"):
                return
            self._state = state
            self._cond.notify_all()  # wakes a write() waiting for a block slot
        self._buf = bytearray()
        pool = self._pool
        try:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)  # no block lands after this
            if self._staged:
                with cancel.cleanup():
                    self._store.remove_uncommitted(self.name, self._where())
        except RetryableSinkError:
            raise
        except Exception as exc:
            raise RetryableSinkError(f"{self._where()}: removing staged blocks failed: "
                                     f"{exc}") from None
        finally:
            self._finish()

    def _finish(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self._sink.forget(self)
