"""The bucket as the ``gcs`` sink sees it: every GCS request of the sink and its writer.

:class:`GCSGateway` holds the per-thread clients and authorized sessions (created on
first use, so building a sink does no I/O), maps keys to object names, reads and lists
objects and cancels resumable sessions. What follows an upload (verifying the new object
against our digests, comparing a key that was already taken with the bytes we meant to
store, recording ``sha256`` and applying retention and holds in one conditional PATCH,
and deleting a generation we created that failed) is its mixin
:class:`~archiver_gcs.commit.CommitMixin`; the retention and holds an object must carry,
confirmed by reading the object back, are :class:`~archiver_gcs.retention.RetentionMixin`.
So ``sink.py`` is only the :class:`~archiver.components.Sink` contract, ``writer.py``
only the upload protocol and ``preflight.py`` only the checks.

Every SDK or transport failure leaves here as :class:`~archiver.errors.SinkError` naming
the sink and the object, worded by :func:`~archiver_gcs.client.api_error` (no credential,
no session id). Every field read from a reply is checked: a reply without ``generation``
or ``size`` is a :class:`~archiver_gcs.client.RetryableSinkError`, never a KeyError.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

from archiver.cancel import mount_cancellable
from archiver.errors import SinkError
from archiver.keys import join_prefix
from archiver.model import StoredObject

from .client import (
    RetryableSinkError,
    api_error,
    blob_facts,
    google_errors,
    load_credentials,
    make_client,
    make_session,
    resource,
)
from .commit import CommitMixin
from .config import GCSConfig
from .retention import RetentionMixin
from .session import cancel_session

# The sink's logger: these are the sink's messages, and log filters name that logger.
log = logging.getLogger("archiver_gcs.sink")
READ_CHUNK = 4 << 20
MAX_NAME_BYTES = 1024  # GCS object name limit


class GCSGateway(CommitMixin, RetentionMixin):
    """One sink's bucket and prefix, and the GCS operations on them (module docstring).

    Clients are created lazily, one per thread (the SDK's HTTP session is not meant to be
    shared between threads).
    """

    def __init__(self, config: GCSConfig, label: str):
        self.config, self.label = config, label
        self._lock = threading.Lock()
        self._local = threading.local()
        self._credentials = None
        self._opened: list[Any] = []  # clients and sessions to close

    # ------------------------------------------------------------------ clients
    def client(self):
        """This thread's ``google.cloud.storage.Client``."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = make_client(self.config, self._creds())
            # its AuthorizedSession (a requests session): a stop cuts its requests in
            # flight and google's retries give up (archiver.cancel)
            mount_cancellable(client._http)
            self._local.client = client
            with self._lock:
                self._opened.append(client)
        return client

    def http(self):
        """This thread's authorized ``requests`` session (resumable chunk uploads)."""
        session = getattr(self._local, "http", None)
        if session is None:
            session = make_session(self._creds())
            mount_cancellable(session)  # a stop cuts a stalled chunk PUT (archiver.cancel)
            self._local.http = session
            with self._lock:
                self._opened.append(session)
        return session

    def _creds(self):
        with self._lock:
            if self._credentials is None:
                self._credentials = load_credentials(self.config, self.label)
            return self._credentials

    def bucket(self):
        return self.client().bucket(self.config.bucket)

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for thing in opened:
            try:
                thing.close()
            except Exception:  # noqa: BLE001 - closing must not hide the run's outcome
                log.debug("sink %s: closing %r failed", self.label, type(thing).__name__)
        self._local = threading.local()

    # ------------------------------------------------------------------ names
    def prefix(self) -> str:
        return join_prefix(self.config.prefix, "")

    def object_name(self, key: str) -> str:
        """The GCS object name of ``key``: prefix + key (keys come from archiver.keys)."""
        problem = None
        if not isinstance(key, str) or not key:
            problem = "the key is empty"
        elif key.startswith("/") or any(s in ("", ".", "..") for s in key.split("/")):
            problem = "the key has a leading '/' or an empty, '.' or '..' segment"
        elif any(c in key for c in "\r\n\x00"):
            problem = "the key contains CR, LF or NUL"
        name = join_prefix(self.config.prefix, key) if problem is None else ""
        if problem is None and len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            problem = f"the object name is longer than {MAX_NAME_BYTES} bytes"
        if problem:
            raise SinkError(f"sink {self.label}: refusing key {key!r}: {problem}")
        return name

    def describe(self, key: str) -> str:
        return f"gs://{self.config.bucket}/{join_prefix(self.config.prefix, key)}"

    def _where(self, key: str) -> str:
        return f"sink {self.label}: {self.describe(key)}"

    # ------------------------------------------------------------------ objects
    def new_blob(self, name: str, metadata: dict[str, str], sha256: str | None):
        """A Blob to upload: metadata, storage class and KMS key as configured."""
        blob = self.bucket().blob(name, kms_key_name=self.config.kms_key_name)
        meta = {**metadata, "sha256": sha256} if sha256 else dict(metadata)
        if meta:
            blob.metadata = meta
        if self.config.storage_class:
            blob.storage_class = self.config.storage_class
        return blob

    def get_blob(self, name: str):
        """The object named ``name`` (its current generation), or None."""
        try:
            blob = self.bucket().get_blob(name)
        except google_errors() as exc:
            raise SinkError(f"sink {self.label}: reading gs://{self.config.bucket}/{name}: "
                            f"{api_error(exc)}") from None
        if blob is not None:
            self._complete(name[len(self.prefix()):], resource(blob), "the object")
        return blob

    def stored(self, key: str, props: dict, digests: dict[str, str],
               existed: bool) -> StoredObject:
        """The StoredObject of an object resource, with what GCS reported about it."""
        checksum, extra = blob_facts(props)
        return StoredObject(sink=self.label, key=key, size=int(props.get("size") or 0),
                            digests=digests, provider_checksum=checksum,
                            location=self.describe(key), existed=existed, extra=extra)

    @contextmanager
    def stream(self, key: str) -> Iterator[Iterator[bytes]]:
        """The bytes stored at ``key``, in chunks; SinkError when there is no object."""
        blob = self.get_blob(self.object_name(key))
        if blob is None:
            raise SinkError(f"{self._where(key)}: no such object")
        with self._reader(key, blob) as chunks:
            yield chunks

    @contextmanager
    def _reader(self, key: str, blob) -> Iterator[Iterator[bytes]]:
        """Chunks of the blob's generation (pinned: a replaced object cannot mix in)."""
        if not blob.size:
            yield iter(())
            return
        try:
            reader = blob.open("rb", chunk_size=READ_CHUNK, raw_download=True)
        except google_errors() as exc:
            raise SinkError(f"{self._where(key)}: {api_error(exc)}") from None

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    data = reader.read(READ_CHUNK)
                except google_errors() as exc:
                    raise SinkError(f"{self._where(key)}: reading failed: "
                                    f"{api_error(exc)}") from None
                if not data:
                    return
                yield data

        try:
            yield chunks()
        finally:
            reader.close()

    def keys(self, prefix: str) -> Iterator[str]:
        """Sink-relative keys of the objects below ``prefix``."""
        base = self.prefix()
        try:
            for blob in self.client().list_blobs(self.config.bucket, prefix=base + prefix):
                yield blob.name[len(base):]
        except google_errors() as exc:
            raise SinkError(f"sink {self.label}: listing gs://{self.config.bucket}/"
                            f"{base + prefix}: {api_error(exc)}") from None

    # ------------------------------------------------------------------ replies
    def _complete(self, key: str, props: dict, what: str) -> None:
        """``props`` has the fields GCS always sends, else RetryableSinkError (nothing is
        deleted: without a generation we cannot name what we would delete)."""
        if not isinstance(props, dict):  # the SDK hands on a non-JSON body as bytes
            missing = ["object resource at all"]
        else:
            missing = [f for f in ("name", "generation", "size") if props.get(f) in (None, "")]
        if missing:
            raise RetryableSinkError(
                f"{self._where(key)}: GCS's reply for {what} has no {', '.join(missing)} "
                "(cut short by the network?); nothing is counted as stored, the next "
                "attempt finds and compares whatever was stored")

    # ------------------------------------------------------------------ sessions
    def cancel_session(self, url: str, where: str) -> None:
        """Cancel the resumable session at ``url``, a URL read back from the ledger."""
        self._check_session_url(url)
        cancel_session(self.http(), url, where)

    def _check_session_url(self, url: str) -> None:
        """Only ever send our credentials to our endpoint and bucket (the ledger is data)."""
        parts, expected = urlsplit(url), urlsplit(self.client().api_endpoint)
        path_ok = parts.path == f"/upload/storage/v1/b/{self.config.bucket}/o"
        if ((parts.scheme, parts.netloc) != (expected.scheme, expected.netloc) or not path_ok
                or "upload_id" not in parse_qs(parts.query)):
            raise SinkError(f"sink {self.label}: refusing to discard a session at "
                            f"{parts.scheme}://{parts.netloc}{parts.path}: not an upload "
                            f"session of gs://{self.config.bucket} on {expected.netloc}")
