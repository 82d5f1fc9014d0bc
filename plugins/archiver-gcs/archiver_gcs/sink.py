"""The ``gcs`` sink: objects in a Google Cloud Storage bucket under an optional prefix.

This module is the :class:`~archiver.components.Sink` contract and nothing else. Every
request to the bucket goes through :class:`~archiver_gcs.gateway.GCSGateway`;
``writer.py`` holds the upload protocol and ``preflight.py`` the online checks.

Every object carries our ``sha256`` as custom metadata, written atomically with the
object (simple uploads without retention or holds) or right after GCS confirmed the
bytes (resumable uploads; retention and holds). An object at one of our keys *without*
``sha256`` is therefore one whose commit was cut short: the next write of that key
verifies its bytes by streaming them and then completes the commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from archiver.components import Sink
from archiver.errors import SinkError
from archiver.model import StoredObject

from .client import redact, resource
from .config import GCSConfig
from .gateway import GCSGateway
from .writer import TOKEN_PREFIX, GCSWriter


class GCSSink(Sink):
    """Stores objects in ``gs://bucket/prefix/...``; never overwrites an object.

    Building the sink does no I/O: the gateway creates its clients on first use.
    """

    name: ClassVar[str] = "gcs"
    Config: ClassVar[type[GCSConfig]] = GCSConfig
    memory_bound: ClassVar[str] = ("per writer: max(simple_upload_threshold, chunk_size) plus "
                                   "one written chunk (defaults: 16 MiB + one chunk)")
    config: GCSConfig

    def __init__(self, config: GCSConfig, label: str = ""):
        super().__init__(config, label)
        self.gateway = GCSGateway(config, self.label)
        self._discarded: set[str] = set()  # writer ids whose pending upload was discarded

    def __repr__(self) -> str:
        return f"<GCSSink {self.label} gs://{self.config.bucket}/{self.gateway.prefix()}>"

    def object_name(self, key: str) -> str:
        """The GCS object name of ``key`` (SinkError for a key GCS cannot name)."""
        return self.gateway.object_name(key)

    def describe(self, key: str) -> str:
        return self.gateway.describe(key)

    def close(self) -> None:
        self.gateway.close()

    # ------------------------------------------------------------------ writing
    def open_writer(self, key: str, metadata: dict[str, str] | None = None) -> GCSWriter:
        name = self.object_name(key)
        meta = {**self.config.metadata, **(metadata or {})}
        meta.pop("sha256", None)  # ours, written at commit
        return GCSWriter(self, key, name, meta)

    def open_repair_writer(self, key: str, metadata: dict[str, str] | None = None) -> GCSWriter:
        """For ``archiver repair`` only: a writer whose upload becomes the live generation
        of ``key``, the damaged one staying noncurrent (``repair.py``). A missing object
        gets an ordinary writer; a bucket without versioning is refused (SinkError saying
        what an operator can do)."""
        from .repair import GCSRepairWriter, check_versioned
        name = self.object_name(key)
        damaged = self.gateway.get_blob(name)
        if damaged is None:
            return self.open_writer(key, metadata)
        check_versioned(self, key)
        meta = {**self.config.metadata, **(metadata or {})}
        meta.pop("sha256", None)
        return GCSRepairWriter(self, key, name, meta, damaged)

    # ------------------------------------------------------------------ reading
    def stat(self, key: str) -> StoredObject | None:
        blob = self.gateway.get_blob(self.object_name(key))
        if blob is None:
            return None
        sha256 = (blob.metadata or {}).get("sha256")
        return self.gateway.stored(key, resource(blob), {"sha256": sha256} if sha256 else {},
                                   existed=True)

    def open_read(self, key: str) -> AbstractContextManager[Iterator[bytes]]:
        return self.gateway.stream(key)

    # ------------------------------------------------------------------ compliance
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Keys below ``prefix`` (sink-relative), for fixity audits finding files nobody
        recorded (``archiver verify``). Needs ``storage.objects.list``."""
        return self.gateway.keys(prefix)

    def retention(self, key: str) -> dict[str, Any] | None:
        """Retention and holds an object written at ``key`` now would receive (no I/O)."""
        cfg = self.config
        if not cfg.compliance:
            return None
        out: dict[str, Any] = {}
        if cfg.retention:
            out.update(mode=cfg.retention.mode, retain_until=cfg.retention.until().isoformat())
        if cfg.temporary_hold:
            out["temporary_hold"] = True
        if cfg.event_based_hold:
            out["event_based_hold"] = True
        return out

    def retention_in_force(self, key: str) -> dict[str, Any]:
        """Retention and holds GCS holds for ``key`` now, read with one GET: ``mode``,
        ``retain_until`` and each hold that is on; ``{}`` for none (``archiver verify``)."""
        return self.gateway.retention_in_force(key)

    # ------------------------------------------------------------------ crash recovery
    def was_discarded(self, ident: str) -> bool:
        return ident in self._discarded

    def discard(self, pending: str) -> None:
        """Cancel the resumable session a crashed (or abandoned) writer left open.

        The session URL is read from the ledger, so it is only used when it is an upload
        session of this bucket on the configured endpoint (our credentials go nowhere
        else). A writer of this process with that token can no longer commit.
        """
        ident, _, url = pending.partition(" ")
        if not ident.startswith(TOKEN_PREFIX):
            raise SinkError(f"sink {self.label}: {redact(pending)[:60]!r} is not a pending "
                            "token of a gcs writer")
        self._discarded.add(ident)  # a live writer of this process can no longer commit
        if url:
            self.gateway.cancel_session(url, f"sink {self.label}: discarding {ident}")

    def cleanup(self, older_than: float) -> list[str]:
        """GCS cannot list open resumable sessions, so there is nothing to find here.

        Sessions recorded in the ledger are cancelled by :meth:`discard`; any other session
        holds no visible object and expires by itself after a week.
        """
        return []

    # ------------------------------------------------------------------ preflight
    def preflight(self) -> None:
        """Bucket exists, object retention enabled when asked for, writes permitted."""
        from .preflight import run_preflight

        run_preflight(self.gateway)
