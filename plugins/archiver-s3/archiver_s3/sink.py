"""The ``s3`` sink: objects in an S3 (or S3-compatible) bucket under an optional prefix.

This module is the :class:`~archiver.components.Sink` contract and nothing else. Every
request to the bucket goes through :class:`~archiver_s3.gateway.S3Gateway` (boto3 is
imported when the first request is made, never by the core); ``writer.py`` holds the
upload protocol and ``checks.py`` preflight and the removal of orphaned uploads.

Every object is written with ``If-None-Match: *`` and a checksum S3 verifies; its sha256
is kept in the object's metadata (single PutObject) or in the ``archiver-sha256`` tag
(multipart uploads, whose metadata is fixed before the digest is known).
"""

from __future__ import annotations

import json
import threading
import weakref
from contextlib import AbstractContextManager
from typing import Any, Iterator

from archiver.components import Sink
from archiver.errors import SinkError
from archiver.model import StoredObject

from . import checks, checksums
from .config import S3SinkConfig
from .gateway import S3Gateway, header_metadata
from .writer import S3Writer


class S3Sink(Sink):
    """Stores each object at ``s3://<bucket>/<prefix>/<key>``; never replaces one.

    Credentials come from boto3's chain (environment, ``profile``, role) and are never
    stored on the sink, logged or shown in errors.
    """

    name = "s3"
    Config = S3SinkConfig
    memory_bound = ("max(multipart_threshold, part_size) + max_parts_in_flight × part_size "
                    "per open writer (80 MiB with the defaults)")

    def __init__(self, config: S3SinkConfig, label: str = ""):
        super().__init__(config, label)
        self.config: S3SinkConfig = config
        self.memory_bound = (f"{config.memory_bound() >> 20} MiB per open writer: "
                             "max(multipart_threshold, part_size) + max_parts_in_flight × "
                             "part_size")
        self.gateway = S3Gateway(config, self.label)
        # Writers open in this process: discard() must stop them, cleanup() spare them.
        self._live: "weakref.WeakValueDictionary[str, S3Writer]" = \
            weakref.WeakValueDictionary()
        self._live_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Sink(label={self.label!r}, location={self.describe('')!r})"

    @property
    def client(self):
        """The boto3 S3 client (created on first use), for hooking botocore events."""
        return self.gateway.client

    def describe(self, key: str) -> str:
        return self.gateway.describe(key)

    def close(self) -> None:
        self.gateway.close()

    # ------------------------------------------------------------------ reading
    def stat(self, key: str) -> StoredObject | None:
        head = self.gateway.head(key)
        if head is None:
            return None
        sha, source = self.gateway.stored_sha256(key, head, use_tag=True)
        extra = self.gateway.facts(head)
        if source:
            extra["sha256_source"] = source
        return StoredObject(sink=self.label, key=key, size=head["ContentLength"],
                            digests={"sha256": sha} if sha else {},
                            provider_checksum=checksums.provider_checksum(head),
                            location=self.describe(key), extra=extra)

    def open_read(self, key: str) -> AbstractContextManager[Iterator[bytes]]:
        return self.gateway.stream(key)

    # ------------------------------------------------------------------ compliance
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Keys below ``prefix`` (sink-relative), for fixity audits finding files nobody
        recorded (``archiver verify``). Needs ``s3:ListBucket``."""
        return self.gateway.keys(prefix)

    def retention(self, key: str) -> dict[str, Any] | None:
        """The Object Lock an object written at ``key`` now would receive (no I/O)."""
        lock = self.config.object_lock
        if lock is None:
            return None
        return {"mode": lock.mode, "retain_until": lock.retain_until_datetime().isoformat(),
                "legal_hold": lock.legal_hold}

    def retention_in_force(self, key: str) -> dict[str, Any]:
        """The Object Lock S3 holds for ``key`` now, read with HeadObject: ``mode``,
        ``retain_until`` and ``legal_hold`` where set, ``{}`` for none (used by
        ``archiver verify``). S3 shows it only to callers allowed s3:GetObjectRetention
        and s3:GetObjectLegalHold."""
        return self.gateway.retention_in_force(key)

    # ------------------------------------------------------------------ writing
    def open_writer(self, key: str, metadata: dict[str, str] | None = None) -> S3Writer:
        writer = S3Writer(self, key, self.gateway.full_key(key), header_metadata(metadata))
        with self._live_lock:
            self._live[writer.nonce] = writer
        return writer

    def open_repair_writer(self, key: str, metadata: dict[str, str] | None = None) -> S3Writer:
        """For ``archiver repair`` only: a writer whose upload becomes the newest version
        of ``key``, the damaged object staying as an older version (``repair.py``). A
        missing object gets an ordinary writer; a bucket without versioning is refused
        (SinkError saying what an operator can do)."""
        from .repair import S3RepairWriter, refuse_unversioned, versioning_status
        head = self.gateway.head(key)
        if head is None:
            return self.open_writer(key, metadata)
        status = versioning_status(self.gateway)
        if status != "Enabled":
            raise refuse_unversioned(self, key, status)
        writer = S3RepairWriter(self, key, self.gateway.full_key(key),
                                header_metadata(metadata), head)
        with self._live_lock:
            self._live[writer.nonce] = writer
        return writer

    def forget(self, writer: S3Writer) -> None:
        """Called by a writer once it is committed, aborted or discarded."""
        with self._live_lock:
            self._live.pop(writer.nonce, None)

    def _live_upload_ids(self) -> set[str]:
        with self._live_lock:
            return {w.upload_id for w in self._live.values() if w.upload_id}

    # ------------------------------------------------------------------ crash cleanup
    def discard(self, pending: str) -> None:
        """Abort the multipart upload a writer's ``pending`` token names.

        Precondition: the writer that recorded ``pending`` is dead (its process ended),
        or is open in this process (it is then stopped first, so it can never commit).
        The core calls ``discard`` only for tokens whose owner is dead. That matters for
        a token recorded before its UploadId existed: it names no upload, so every upload
        open at exactly that key is aborted, except those of writers open in this
        process. A live writer of the same key in another process would lose its upload
        too (its commit then fails; nothing is corrupted), which is why the owner must
        be dead.
        """
        try:
            token = json.loads(pending)
            bucket, full_key, nonce = token["bucket"], token["key"], token["writer"]
            upload_id = token.get("upload_id")
            if not all(isinstance(v, str) and v for v in (bucket, full_key, nonce)):
                raise ValueError
        except (ValueError, TypeError, KeyError):
            raise SinkError(f"sink {self.label!r}: refusing to discard {pending!r}: not a "
                            "pending token of an s3 writer") from None
        with self._live_lock:
            writer = self._live.get(nonce)
        if writer is not None:  # still open in this process: it must never commit now
            writer.discard()
        if upload_id:
            self.gateway.abort_upload(bucket, full_key, upload_id)
        elif writer is None:  # recorded before the upload existed: see the precondition
            checks.abort_uploads(self.gateway, bucket, full_key, exact=True,
                                 spare=self._live_upload_ids())

    def preflight(self) -> None:
        checks.preflight(self.gateway)

    def cleanup(self, older_than: float) -> list[str]:
        return checks.abort_uploads(self.gateway, self.gateway.bucket, self.gateway.prefix,
                                    older_than=older_than, spare=self._live_upload_ids())
