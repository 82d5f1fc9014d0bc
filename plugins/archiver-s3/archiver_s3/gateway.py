"""The bucket as the ``s3`` sink sees it: every S3 request of the sink and its writer.

:class:`S3Gateway` wraps one boto3 client, created on first use so that building a sink
(or importing the plugin) does no I/O and imports no boto3. It knows the bucket and
prefix, the options every new object carries, where an object's sha256 is recorded (S3's
checksum, our metadata or our tag) and how to word a botocore error without credentials;
it creates objects (PutObject, multipart uploads) and heads, reads and lists them. What
follows a commit (reading the new object back, comparing a key that was already taken,
tagging the sha256) is its mixin :class:`~archiver_s3.commit.CommitMixin`; the Object
Lock an object must carry, confirmed and completed after the commit, is
:class:`~archiver_s3.objectlock.ObjectLockMixin`. So ``sink.py`` is only the
:class:`~archiver.components.Sink` contract, ``writer.py`` only the upload protocol and
``checks.py`` only preflight and cleanup.

The methods creating objects return None when ``If-None-Match: *`` finds the key taken
(the caller then asks :meth:`S3Gateway.match_existing`) and let other botocore errors
through, so that the writer words its own message; the others raise ``SinkError``.
Every field read from a reply is checked: a reply cut short by the network (a HEAD whose
headers stop half way parses as a success) is a
:class:`~archiver_s3.awserrors.RetryableSinkError`, never a KeyError.

Requests go out without ``Expect: 100-continue``: botocore adds it to every file-like
body, and a connection closed right after the interim ``100 Continue`` line makes
botocore read the closed socket forever at 100 % CPU. Bodies stay seekable views
(:class:`~archiver_s3.body.BufferBody`) so nothing is copied; the price is that a
request S3 refuses (412, 403) has already sent its body.
"""

from __future__ import annotations

import logging
import re
import threading
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator
from urllib.parse import quote, urlencode

from archiver import cancel
from archiver.errors import PluginError, SinkError
from archiver.keys import join_prefix

from . import awserrors, checksums
from .awserrors import RetryableSinkError
from .body import BufferBody
from .commit import CommitMixin
from .connections import make_cancellable
from .config import SHA256_METADATA, SHA256_TAG, S3SinkConfig
from .objectlock import Lock, ObjectLockMixin, _utc, _version

# The sink's logger: these are the sink's messages, and log filters name that logger.
log = logging.getLogger("archiver_s3.sink")

READ_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_META = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
INSTALL_HINT = "pip install -e plugins/archiver-s3  (distribution 'archiver-s3')"

_loader_lock = threading.Lock()
_shared_loader = None


def _boto3_session(profile: str | None, region: str | None):
    """A boto3 session whose botocore data loader (the parsed API models, ~0.2 s to load)
    is shared by every sink of the process; credentials and settings stay per session."""
    global _shared_loader
    import boto3
    import botocore.session

    core = botocore.session.Session(profile=profile)
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _shared_loader)
    return boto3.session.Session(botocore_session=core, region_name=region)


def header_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """The caller's metadata as S3 user metadata can carry it, without ``sha256`` (ours,
    set at commit): names lower-cased to a safe alphabet; values printable ASCII as is,
    anything else (and '%') percent-encoded, as HTTP headers need."""
    meta = {re.sub(r"[^a-z0-9._-]", "-", str(k).lower())[:128] or "x":
            quote(str(v), safe=_SAFE_META) for k, v in (metadata or {}).items()}
    meta.pop(SHA256_METADATA, None)
    return meta


def _no_expect(request, **kwargs) -> None:
    """botocore ``before-send`` handler: drop ``Expect: 100-continue`` (module docstring).
    The header is not signed, so removing it here leaves the signature valid."""
    request.headers.pop("Expect", None)


class S3Gateway(CommitMixin, ObjectLockMixin):
    """One sink's bucket and prefix, and the S3 operations on them (module docstring).

    Credentials come from boto3's chain (environment, ``profile``, role) and are never
    stored here, logged or shown in errors. The client is thread-safe: the sink, its
    writers and their part uploads share it.
    """

    def __init__(self, config: S3SinkConfig, label: str):
        self.config, self.label = config, label
        self.bucket = config.bucket
        self.prefix = join_prefix(config.prefix, "")  # "" or "a/b/"
        self._client = None
        self._client_lock = threading.Lock()

    # ------------------------------------------------------------------ client
    @property
    def client(self):
        """The boto3 S3 client, created on first use."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self):
        try:
            from botocore.config import Config
        except ImportError as exc:
            raise PluginError(f"sink {self.label!r}: boto3 is not installed; install it "
                              f"with: {INSTALL_HINT}") from exc
        cfg = self.config
        try:
            session = _boto3_session(cfg.profile, cfg.region)
            client = session.client(
                "s3", endpoint_url=cfg.endpoint_url,
                config=Config(max_pool_connections=max(10, 4 * cfg.max_parts_in_flight),
                              s3={"addressing_style": cfg.addressing_style},
                              user_agent_extra="archiver-s3"))
        except Exception as exc:
            raise self.error("setting up the S3 client", exc) from exc
        client.meta.events.register("before-send.s3", _no_expect, "archiver-s3-no-expect")
        make_cancellable(client, self.label)  # a stop cuts requests in flight
        return client

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ names, errors
    def full_key(self, key: str) -> str:
        return self.prefix + key

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def error(self, action: str, exc: BaseException, key: str | None = None) -> SinkError:
        where = f"key {key!r} ({self.describe(key)})" if key is not None \
            else f"bucket {self.bucket!r}"
        kind = RetryableSinkError if awserrors.is_transport(exc) else SinkError
        return kind(f"sink {self.label!r}: {where}: {action} failed: "
                    f"{awserrors.describe(exc)}")

    def field(self, resp: Any, name: str, action: str, key: str | None = None) -> Any:
        """``resp[name]``, or a RetryableSinkError naming the sink, the key and the field:
        S3 always sends it, so the reply was cut short (or is not S3's)."""
        value = resp.get(name) if isinstance(resp, dict) else None
        if value is None:
            where = f"key {key!r} ({self.describe(key)})" if key is not None \
                else f"bucket {self.bucket!r}"
            raise RetryableSinkError(
                f"sink {self.label!r}: {where}: the {action} reply has no {name} (cut short "
                "by the network?); nothing is counted as stored, the next attempt retries")
        return value

    # ------------------------------------------------------------------ creating objects
    def object_params(self, full_key: str, metadata: dict[str, str],
                      lock: Lock | None = None) -> dict[str, Any]:
        """Arguments shared by PutObject and CreateMultipartUpload: the object is locked
        (with ``lock``, by default :meth:`wanted_lock`), encrypted and tagged from the
        moment it exists."""
        cfg = self.config
        meta = {**cfg.metadata, **metadata}
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": full_key, "Metadata": meta,
                                  "ChecksumAlgorithm": cfg.checksum_algorithm}
        if cfg.storage_class:
            params["StorageClass"] = cfg.storage_class
        if cfg.sse:
            params["ServerSideEncryption"] = cfg.sse
        if cfg.kms_key_id:
            params["SSEKMSKeyId"] = cfg.kms_key_id
        if cfg.tags:
            params["Tagging"] = urlencode(cfg.tags, quote_via=quote)
        lock = lock or self.wanted_lock()
        if lock:
            params.update(lock.params())
        return params

    @staticmethod
    def _conditional(call, **kwargs):
        """``call`` retried on 409 ConditionalRequestConflict (a concurrent conditional
        write of the same key), as S3 asks."""
        for attempt in range(3):
            try:
                return call(**kwargs)
            except Exception as exc:
                if awserrors.code(exc) != "ConditionalRequestConflict" or attempt == 2:
                    raise

    def put_new(self, full_key: str, body: bytearray, metadata: dict[str, str],
                checksum: str, lock: Lock | None = None) -> dict | None:
        """One PutObject with ``If-None-Match: *`` and the full-object ``checksum`` S3
        verifies; None when the key is taken. ``body`` is sent in place, not copied."""
        params = self.object_params(full_key, metadata, lock)
        try:
            return self._conditional(
                self.client.put_object, Body=BufferBody(body), IfNoneMatch="*",
                **{f"Checksum{self.config.checksum_algorithm}": checksum}, **params)
        except Exception as exc:
            if awserrors.code(exc) in awserrors.PRECONDITION_FAILED:
                return None
            raise

    def start_upload(self, full_key: str, metadata: dict[str, str],
                     lock: Lock | None = None) -> str:
        """CreateMultipartUpload with every option a finished object carries; its UploadId."""
        params = self.object_params(full_key, metadata, lock)
        params["ChecksumType"] = checksums.multipart_type(self.config.checksum_algorithm)
        resp = self.client.create_multipart_upload(**params)
        return str(self.field(resp, "UploadId", "CreateMultipartUpload",
                              full_key[len(self.prefix):]))

    def upload_part(self, full_key: str, upload_id: str, number: int,
                    data: bytes | bytearray) -> tuple[dict[str, Any], bytes]:
        """UploadPart with the part's checksum (S3 refuses bytes that do not match it);
        returns the part's entry for CompleteMultipartUpload and its binary checksum."""
        algorithm = self.config.checksum_algorithm
        digest = checksums.part_checksum(algorithm, data)
        value = checksums.b64(digest)
        name = f"Checksum{algorithm}"
        resp = self.client.upload_part(
            Bucket=self.bucket, Key=full_key, UploadId=upload_id, PartNumber=number,
            Body=BufferBody(data), ContentLength=len(data), ChecksumAlgorithm=algorithm,
            **{name: value})
        if resp.get(name) not in (None, value):
            raise SinkError(f"S3 reports checksum {resp.get(name)} for part {number}, "
                            f"we sent {value}")
        etag = self.field(resp, "ETag", f"UploadPart (part {number})",
                          full_key[len(self.prefix):])
        return {"PartNumber": number, "ETag": etag, name: value}, digest

    def complete_new(self, full_key: str, upload_id: str, parts: list[dict], size: int,
                     checksum: dict[str, str]) -> dict | None:
        """CompleteMultipartUpload with ``If-None-Match: *`` (and, for a full-object
        checksum, ``checksum``'s ChecksumType and value); None when the key is taken."""
        try:
            return self._conditional(
                self.client.complete_multipart_upload, Bucket=self.bucket, Key=full_key,
                UploadId=upload_id, IfNoneMatch="*", MultipartUpload={"Parts": parts},
                MpuObjectSize=size, **checksum)
        except Exception as exc:
            if awserrors.code(exc) in awserrors.PRECONDITION_FAILED:
                return None
            raise

    def abort_upload(self, bucket: str, full_key: str, upload_id: str) -> None:
        """AbortMultipartUpload; an upload already gone (aborted or completed) is fine."""
        try:
            with cancel.cleanup():  # spared by a stop for a moment: it removes what we sent
                self.client.abort_multipart_upload(Bucket=bucket, Key=full_key,
                                                   UploadId=upload_id)
        except Exception as exc:
            if awserrors.code(exc) in awserrors.NO_SUCH_UPLOAD:
                return  # already gone (aborted or completed): nothing left behind
            raise SinkError(f"sink {self.label!r}: aborting multipart upload {upload_id} of "
                            f"s3://{bucket}/{full_key} failed: {awserrors.describe(exc)}; "
                            "'archiver cleanup' retries") from exc
        log.debug("sink %s: aborted multipart upload %s of s3://%s/%s", self.label, upload_id,
                  bucket, full_key)

    def open_uploads(self, bucket: str, prefix: str) -> Iterator[dict]:
        """The multipart uploads open under ``prefix`` (ListMultipartUploads entries)."""
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=prefix)
            for page in pages:
                yield from page.get("Uploads") or []
        except SinkError:
            raise
        except Exception as exc:
            raise SinkError(f"sink {self.label!r}: listing multipart uploads under "
                            f"s3://{bucket}/{prefix} failed: "
                            f"{awserrors.describe(exc, 's3:ListBucketMultipartUploads')}"
                            ) from exc

    # ------------------------------------------------------------------ stored objects
    def head(self, key: str, **extra) -> dict | None:
        """HeadObject of ``key`` (with its checksum), or None when there is no object.

        The reply always has ``ContentLength`` (a RetryableSinkError otherwise: a HEAD
        whose headers were cut off parses as a success)."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key),
                                           ChecksumMode="ENABLED", **extra)
        except Exception as exc:
            if awserrors.code(exc) in awserrors.NOT_FOUND_CODES:
                return None
            raise self.error("HeadObject", exc, key) from exc
        size = self.field(head, "ContentLength", "HeadObject", key)
        if not isinstance(size, int) or size < 0:
            raise RetryableSinkError(f"sink {self.label!r}: key {key!r} "
                                     f"({self.describe(key)}): HeadObject reports size "
                                     f"{size!r}; the next attempt retries")
        return head

    def facts(self, head: dict) -> dict[str, Any]:
        """``StoredObject.extra`` of an object: what HeadObject reported about it."""
        until = head.get("ObjectLockRetainUntilDate")
        extra = {"bucket": self.bucket, "etag": head.get("ETag"),
                 "version_id": head.get("VersionId"),
                 "storage_class": head.get("StorageClass", "STANDARD"),
                 "sse": head.get("ServerSideEncryption"), "kms_key_id": head.get("SSEKMSKeyId"),
                 "object_lock_mode": head.get("ObjectLockMode"),
                 "object_lock_retain_until": _utc(until).isoformat()
                 if isinstance(until, datetime) else None,
                 "object_lock_legal_hold": head.get("ObjectLockLegalHoldStatus")}
        return {k: v for k, v in extra.items() if v}

    def stored_sha256(self, key: str, head: dict, use_tag: bool) -> tuple[str | None, str]:
        """(sha256, where it came from): S3's own full-object SHA256, our metadata, or
        (``use_tag``) the tag written after a multipart upload."""
        sha = checksums.sha256_from_provider(checksums.provider_checksum(head))
        if sha:
            return sha, "provider"
        sha = str(head.get("Metadata", {}).get(SHA256_METADATA, "")).lower()
        if _HEX64.match(sha):
            return sha, "metadata"
        if use_tag:
            try:
                tags = self.client.get_object_tagging(Bucket=self.bucket,
                                                      Key=self.full_key(key), **_version(head))
            except Exception as exc:
                log.debug("sink %s: no tags for %s: %s", self.label, key,
                          awserrors.describe(exc))
                return None, ""
            for tag in tags.get("TagSet", []):
                if tag.get("Key") == SHA256_TAG and _HEX64.match(tag.get("Value", "")):
                    return tag["Value"], "tag"
        return None, ""

    @contextmanager
    def stream(self, key: str) -> Iterator[Iterator[bytes]]:
        """GetObject of ``key``: its bytes in chunks, checked by botocore against S3's
        full-object checksum at the end of the stream."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key),
                                          ChecksumMode="ENABLED")
        except Exception as exc:
            if awserrors.code(exc) in awserrors.NOT_FOUND_CODES:
                raise SinkError(f"sink {self.label!r}: no object at key {key!r} "
                                f"({self.describe(key)})") from exc
            raise self.error("GetObject", exc, key) from exc
        body = self.field(resp, "Body", "GetObject", key)
        try:
            yield self._chunks(body, key)
        finally:
            body.close()

    def _chunks(self, body, key: str) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(READ_CHUNK)
        except Exception as exc:
            raise self.error("reading", exc, key) from exc

    def keys(self, prefix: str) -> Iterator[str]:
        """Sink-relative keys of the objects below ``prefix`` (ListObjectsV2)."""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.full_key(prefix))
            for page in pages:
                for obj in page.get("Contents") or []:
                    yield str(self.field(obj, "Key", "ListObjectsV2"))[len(self.prefix):]
        except SinkError:
            raise
        except Exception as exc:
            raise self.error(f"listing keys below {prefix!r} (ListObjectsV2)", exc) from exc
