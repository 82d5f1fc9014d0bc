"""The bucket as the ``s3`` sink sees it: every S3 request of the sink and its writer.

:class:`S3Gateway` wraps one boto3 client, created on first use so that building a sink
(or importing the plugin) does no I/O and imports no boto3. It knows the bucket and
prefix, the options every new object carries, where an object's sha256 is recorded (S3's
checksum, our metadata or our tag) and how to word a botocore error without credentials.
So ``sink.py`` is only the :class:`~archiver.components.Sink` contract, ``writer.py`` only
the upload protocol and ``checks.py`` only preflight and cleanup.

The methods creating objects return None when ``If-None-Match: *`` finds the key taken
(the caller then asks :meth:`S3Gateway.match_existing`) and let other botocore errors
through, so that the writer words its own message; the others raise ``SinkError``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import quote, urlencode

from archiver.errors import ConflictError, PluginError, SinkError
from archiver.keys import join_prefix
from archiver.model import StoredObject

from . import awserrors, checksums
from .body import BufferBody
from .config import SHA256_METADATA, SHA256_TAG, S3SinkConfig

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


def _version(resp: dict) -> dict[str, str]:
    vid = resp.get("VersionId")
    return {"VersionId": vid} if vid and vid != "null" else {}


class S3Gateway:
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
            return session.client(
                "s3", endpoint_url=cfg.endpoint_url,
                config=Config(max_pool_connections=max(10, 4 * cfg.max_parts_in_flight),
                              s3={"addressing_style": cfg.addressing_style},
                              user_agent_extra="archiver-s3"))
        except Exception as exc:
            raise self.error("setting up the S3 client", exc) from exc

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
        return SinkError(f"sink {self.label!r}: {where}: {action} failed: "
                         f"{awserrors.describe(exc)}")

    # ------------------------------------------------------------------ creating objects
    def object_params(self, full_key: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Arguments shared by PutObject and CreateMultipartUpload: the object is locked,
        encrypted and tagged from the moment it exists."""
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
        if cfg.object_lock:
            params["ObjectLockMode"] = cfg.object_lock.mode
            params["ObjectLockRetainUntilDate"] = cfg.object_lock.retain_until_datetime()
            if cfg.object_lock.legal_hold:
                params["ObjectLockLegalHoldStatus"] = "ON"
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
                checksum: str) -> dict | None:
        """One PutObject with ``If-None-Match: *`` and the full-object ``checksum`` S3
        verifies; None when the key is taken. ``body`` is sent in place, not copied."""
        params = self.object_params(full_key, metadata)
        try:
            return self._conditional(
                self.client.put_object, Body=BufferBody(body), IfNoneMatch="*",
                **{f"Checksum{self.config.checksum_algorithm}": checksum}, **params)
        except Exception as exc:
            if awserrors.code(exc) in awserrors.PRECONDITION_FAILED:
                return None
            raise

    def start_upload(self, full_key: str, metadata: dict[str, str]) -> str:
        """CreateMultipartUpload with every option a finished object carries; its UploadId."""
        params = self.object_params(full_key, metadata)
        params["ChecksumType"] = checksums.multipart_type(self.config.checksum_algorithm)
        return self.client.create_multipart_upload(**params)["UploadId"]

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
        return {"PartNumber": number, "ETag": resp["ETag"], name: value}, digest

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
            self.client.abort_multipart_upload(Bucket=bucket, Key=full_key, UploadId=upload_id)
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
        """HeadObject of ``key`` (with its checksum), or None when there is no object."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.full_key(key),
                                           ChecksumMode="ENABLED", **extra)
        except Exception as exc:
            if awserrors.code(exc) in awserrors.NOT_FOUND_CODES:
                return None
            raise self.error("HeadObject", exc, key) from exc

    def facts(self, head: dict) -> dict[str, Any]:
        """``StoredObject.extra`` of an object: what HeadObject reported about it."""
        until = head.get("ObjectLockRetainUntilDate")
        extra = {"bucket": self.bucket, "etag": head.get("ETag"),
                 "version_id": head.get("VersionId"),
                 "storage_class": head.get("StorageClass", "STANDARD"),
                 "sse": head.get("ServerSideEncryption"), "kms_key_id": head.get("SSEKMSKeyId"),
                 "object_lock_mode": head.get("ObjectLockMode"),
                 "object_lock_retain_until": until.isoformat() if until else None,
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
        body = resp["Body"]
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
                    yield obj["Key"][len(self.prefix):]
        except Exception as exc:
            raise self.error(f"listing keys below {prefix!r} (ListObjectsV2)", exc) from exc

    # ------------------------------------------------------------------ after a commit
    def match_existing(self, key: str, sha256: str, digests: dict[str, str]) -> StoredObject:
        """The object already at ``key`` if it holds ``sha256``, else ConflictError.

        Tags are writable by anyone allowed s3:PutObjectTagging, so they are not trusted
        here: without a checksum or metadata digest the object is read and hashed.
        """
        head = self.head(key)
        if head is None:
            raise SinkError(f"sink {self.label!r}: key {key!r} ({self.describe(key)}) "
                            "existed a moment ago and is gone; retry")
        existing, source = self.stored_sha256(key, head, use_tag=False)
        if existing is None:
            h = hashlib.sha256()
            with self.stream(key) as chunks:
                for chunk in chunks:
                    h.update(chunk)
            existing, source = h.hexdigest(), "read"
        if existing != sha256:
            raise ConflictError(f"sink {self.label!r}: key {key!r} ({self.describe(key)}) "
                                f"already holds different bytes (sha256 {existing}, new "
                                f"{sha256}); the stored object was left untouched")
        extra = {**self.facts(head), "sha256_source": source}
        return StoredObject(sink=self.label, key=key, size=head["ContentLength"],
                            digests=dict(digests),
                            provider_checksum=checksums.provider_checksum(head),
                            location=self.describe(key), existed=True, extra=extra)

    def tag_sha256(self, key: str, version: str | None, sha256: str) -> None:
        """Record the digest of a multipart object as a tag (with the configured tags)."""
        tags = [{"Key": k, "Value": v} for k, v in self.config.tags.items()]
        tags.append({"Key": SHA256_TAG, "Value": sha256})
        try:
            self.client.put_object_tagging(Bucket=self.bucket, Key=self.full_key(key),
                                           Tagging={"TagSet": tags},
                                           **_version({"VersionId": version}))
        except Exception as exc:  # the object is complete and verified; only stat suffers
            log.warning("sink %s: %s: could not tag the sha256 (%s); stat() will not report "
                        "it", self.label, self.describe(key), awserrors.describe(exc))

    def verify_stored(self, key: str, resp: dict, digests: dict[str, str], expected: str,
                      kind: str, size: int) -> StoredObject:
        """Check what S3 reports for the object just committed: its size and the
        checksum it computed against ``expected`` (ours)."""
        head = self.head(key, **_version(resp))
        if head is None:
            raise SinkError(f"sink {self.label!r}: key {key!r} ({self.describe(key)}) is "
                            "missing right after it was committed")
        checksum = checksums.provider_checksum(resp) or checksums.provider_checksum(head, kind)
        problems = []
        if head["ContentLength"] != size:
            problems.append(f"S3 holds {head['ContentLength']} bytes, we sent {size}")
        if not checksum:
            # Some S3-compatible stores accept but never report flexible checksums.
            log.warning("sink %s: %s: the store reports no checksum; the object is stored "
                        "but its provider checksum cannot be recorded", self.label,
                        self.describe(key))
        elif checksum.get("value") != expected:
            problems.append(f"S3's {self.config.checksum_algorithm} checksum is "
                            f"{checksum.get('value')}, ours {expected}")
        if problems:
            raise SinkError(f"sink {self.label!r}: key {key!r} ({self.describe(key)}): "
                            f"{'; '.join(problems)}")
        if checksum:
            checksum.setdefault("type", kind)
        return StoredObject(sink=self.label, key=key, size=size, digests=dict(digests),
                            provider_checksum=checksum, location=self.describe(key),
                            extra=self.facts(head))
