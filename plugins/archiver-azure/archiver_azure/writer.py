"""Push-style writer of one block blob: one Put Blob, or staged blocks and one Put Block List.

The block machinery (state, running digests, bounded pool, failures, abort, stops) is
archiver's public :class:`archiver.parts.PartedWriter`; this module supplies Azure's
requests. Bytes are buffered up to ``block_size``. An object that ends there is sent with
one Put Blob. On the first byte beyond it the writer stages ``block_size`` blocks (Put
Block), at most ``max_blocks_in_flight`` at once on the helper's per-writer pool;
``write`` blocks while that many are in flight, so a writer holds at most ``block_size ×
(1 + max_blocks_in_flight)`` bytes. Staged blocks are invisible: the blob appears only
when ``commit`` sends Put Block List. Both Put Blob and Put Block List carry
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
from typing import TYPE_CHECKING

from archiver import cancel
from archiver.errors import ArchiverError, SinkError
from archiver.model import StoredObject
from archiver.parts import PartedWriter, Running

from .client import RetryableSinkError
from .config import MAX_BLOCKS

if TYPE_CHECKING:
    from .sink import AzureSink

log = logging.getLogger("archiver_azure.writer")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class AzureWriter(PartedWriter):
    """Writes one blob at ``key``; ``stats`` counts blocks in flight (the memory bound)."""

    unit, noun = "block", "blob"

    def __init__(self, sink: "AzureSink", key: str, name: str, metadata: dict[str, str]):
        cfg = sink.config
        super().__init__(part_size=cfg.block_size, max_in_flight=cfg.max_blocks_in_flight,
                         max_parts=MAX_BLOCKS, running=Running("md5"),
                         thread_name="archiver-azure-block")
        self._sink, self.key, self.name = sink, key, name
        self._store = sink.store
        self._metadata = metadata
        self.nonce = secrets.token_hex(8)

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

    def _part_error(self, exc: BaseException) -> SinkError:
        if isinstance(exc, ArchiverError):
            return exc if isinstance(exc, SinkError) else SinkError(f"{self._where()}: {exc}")
        return self._store.error("Put Block", exc, self.key)

    # ------------------------------------------------------------------ blocks
    def _block_id(self, index: int) -> str:
        return b64(f"{self.nonce}{index:06d}".encode())

    def _upload_part(self, index: int, data: bytearray) -> bytes:
        digest = hashlib.md5(data).digest()
        self._store.stage_block(self.name, self._block_id(index), data, digest)
        return digest

    # ------------------------------------------------------------------ commit
    def _put_whole(self, body: bytearray, sha256: str,
                   digests: dict[str, str]) -> StoredObject:
        wanted = self._store.wanted_immutability()  # counted from now, sent with the bytes
        created = self._store.put_new(self.key, self.name, bytes(body), self._running.md5.digest(),
                                      sha256, self._metadata, wanted)
        return self._stored(created, sha256, digests, wanted, None)

    def _complete(self, block_md5: list[bytes], sha256: str,
                  digests: dict[str, str]) -> StoredObject:
        wanted = self._store.wanted_immutability()
        blocks = [self._block_id(i) for i in range(len(block_md5))]
        created = self._store.commit_new(self.key, self.name, blocks,
                                         self._running.md5.digest(), sha256, self._metadata,
                                         wanted)
        block_checksum = {"algorithm": "MD5", "type": "PER_BLOCK", "verified": "service",
                          "blocks": len(blocks), "block_size": self._part_size,
                          "composite": b64(hashlib.md5(b"".join(block_md5)).digest())}
        return self._stored(created, sha256, digests, wanted, block_checksum)

    def _stored(self, created, sha256, digests, wanted, block_checksum) -> StoredObject:
        if created is None:  # the name is taken: the same bytes, or a conflict
            stored = self._store.match_existing(self.key, self.name, sha256, self.size,
                                                digests)
            log.debug("%s: found at the key already (existed=True)", self._where())
            return stored
        # Put Blob: the service checked the whole body's MD5. Put Block List: it checked
        # every block's MD5; the whole-blob MD5 is ours, stored as sent.
        stored = self._store.confirm(self.key, self.name, digests, self._running.md5.digest(),
                                     self.size, wanted,
                                     "client" if block_checksum else "service")
        if block_checksum:
            stored.extra["block_checksum"] = block_checksum
        return stored

    # ------------------------------------------------------------------ abort
    def abort(self) -> None:
        """Drop what this writer staged; any thread, idempotent, a no-op after commit.
        Raises RetryableSinkError when the service cannot be reached to remove staged
        blocks (the core then keeps the pending token for ``Sink.discard``)."""
        super().abort()

    def _abort_remote(self) -> None:
        try:
            self._wait_idle()  # no block lands after this, so one delete removes them all
            if self.started:
                with cancel.cleanup():
                    self._store.remove_uncommitted(self.name, self._where())
        except RetryableSinkError:
            raise
        except Exception as exc:
            raise RetryableSinkError(f"{self._where()}: removing staged blocks failed: "
                                     f"{exc}") from None

    def _closed(self) -> None:
        self._sink.forget(self)
