"""The ``s3`` sink: objects in an S3 (or S3-compatible) bucket under an optional prefix.

boto3 is imported when the first request is made, never by the core. Every object is
written with ``If-None-Match: *`` and a checksum S3 verifies; its sha256 is kept in the
object's metadata (single PutObject) or in the ``archiver-sha256`` tag (multipart
uploads, whose metadata is fixed before the digest is known). See ``writer.py`` for the
upload protocol and ``checks.py`` for ``preflight`` and ``cleanup``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import quote, urlencode

from archiver.components import Sink
from archiver.errors import ConflictError, PluginError, SinkError
from archiver.keys import join_prefix
from archiver.model import StoredObject

from . import awserrors, checks, checksums
from .config import SHA256_METADATA, SHA256_TAG, S3SinkConfig
from .writer import S3Writer

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


def _metadata_key(key: str) -> str:
    return re.sub(r"[^a-z0-9._-]", "-", str(key).lower())[:128] or "x"


def _metadata_value(value: str) -> str:
    """Printable ASCII as is; anything else (and '%') percent-encoded, as HTTP headers need."""
    return quote(str(value), safe=_SAFE_META)


def _version(resp: dict) -> dict[str, str]:
    vid = resp.get("VersionId")
    return {"VersionId": vid} if vid and vid != "null" else {}


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
        self.bucket = config.bucket
        self.prefix = join_prefix(config.prefix, "")  # "" or "a/b/"
        self.memory_bound = (f"{config.memory_bound() >> 20} MiB per open writer: "
                             "max(multipart_threshold, part_size) + max_parts_in_flight × "
                             "part_size")
        self._client = None
        self._client_lock = threading.Lock()
        self._live: "weakref.WeakValueDictionary[str, S3Writer]" = \
            weakref.WeakValueDictionary()  # open writers, for discard() and cleanup()
        self._live_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Sink(label={self.label!r}, location={self.describe('')!r})"

    # ------------------------------------------------------------------ client
    @property
    def client(self):
        """The boto3 S3 client, created on first use (clients are thread-safe)."""
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

    # ------------------------------------------------------------------ helpers
    def full_key(self, key: str) -> str:
        return self.prefix + key

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def error(self, action: str, exc: BaseException, key: str | None = None) -> SinkError:
        where = f"key {key!r} ({self.describe(key)})" if key is not None \
            else f"bucket {self.bucket!r}"
        return SinkError(f"sink {self.label!r}: {where}: {action} failed: "
                         f"{awserrors.describe(exc)}")

    def object_params(self, full_key: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Arguments shared by PutObject and CreateMultipartUpload."""
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
    def conditional(call, **kwargs):
        """``call`` retried on 409 ConditionalRequestConflict (a concurrent conditional
        write of the same key), as S3 asks."""
        for attempt in range(3):
            try:
                return call(**kwargs)
            except Exception as exc:
                if awserrors.code(exc) != "ConditionalRequestConflict" or attempt == 2:
                    raise

    def abort_upload(self, bucket: str, full_key: str, upload_id: str) -> None:
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

    def forget(self, writer: S3Writer) -> None:
        with self._live_lock:
            self._live.pop(writer.nonce, None)

    def live_writer(self, nonce: str) -> S3Writer | None:
        with self._live_lock:
            return self._live.get(nonce)

    def live_upload_ids(self) -> set[str]:
        with self._live_lock:
            return {w.upload_id for w in self._live.values() if w.upload_id}

    # ------------------------------------------------------------------ reading
    def _head(self, key: str, **extra) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.full_key(key),
                                           ChecksumMode="ENABLED", **extra)
        except Exception as exc:
            if awserrors.code(exc) in awserrors.NOT_FOUND_CODES:
                return None
            raise self.error("HeadObject", exc, key) from exc

    def _extra(self, head: dict) -> dict[str, Any]:
        until = head.get("ObjectLockRetainUntilDate")
        extra = {"bucket": self.bucket, "etag": head.get("ETag"),
                 "version_id": head.get("VersionId"),
                 "storage_class": head.get("StorageClass", "STANDARD"),
                 "sse": head.get("ServerSideEncryption"), "kms_key_id": head.get("SSEKMSKeyId"),
                 "object_lock_mode": head.get("ObjectLockMode"),
                 "object_lock_retain_until": until.isoformat() if until else None,
                 "object_lock_legal_hold": head.get("ObjectLockLegalHoldStatus")}
        return {k: v for k, v in extra.items() if v}

    def _stored_sha256(self, key: str, head: dict, use_tag: bool) -> tuple[str | None, str]:
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

    def stat(self, key: str) -> StoredObject | None:
        head = self._head(key)
        if head is None:
            return None
        sha, source = self._stored_sha256(key, head, use_tag=True)
        extra = self._extra(head)
        if source:
            extra["sha256_source"] = source
        return StoredObject(sink=self.label, key=key, size=head["ContentLength"],
                            digests={"sha256": sha} if sha else {},
                            provider_checksum=checksums.provider_checksum(head),
                            location=self.describe(key), extra=extra)

    @contextmanager
    def open_read(self, key: str) -> Iterator[Iterator[bytes]]:
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
            # botocore checks S3's full-object checksum at the end of the stream.
            yield from body.iter_chunks(READ_CHUNK)
        except Exception as exc:
            raise self.error("reading", exc, key) from exc

    # ------------------------------------------------------------------ compliance
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Keys below ``prefix`` (sink-relative), for fixity audits finding files nobody
        recorded (``archiver verify``). Needs ``s3:ListBucket``."""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.full_key(prefix))
            for page in pages:
                for obj in page.get("Contents") or []:
                    yield obj["Key"][len(self.prefix):]
        except Exception as exc:
            raise self.error(f"listing keys below {prefix!r} (ListObjectsV2)", exc) from exc

    def retention(self, key: str) -> dict[str, Any] | None:
        """The Object Lock an object written at ``key`` now would receive (no I/O)."""
        lock = self.config.object_lock
        if lock is None:
            return None
        return {"mode": lock.mode, "retain_until": lock.retain_until_datetime().isoformat(),
                "legal_hold": lock.legal_hold}

    # ------------------------------------------------------------------ writing
    def open_writer(self, key: str, metadata: dict[str, str] | None = None) -> S3Writer:
        meta = {_metadata_key(k): _metadata_value(v) for k, v in (metadata or {}).items()}
        meta.pop(SHA256_METADATA, None)
        writer = S3Writer(self, key, self.full_key(key), meta)
        with self._live_lock:
            self._live[writer.nonce] = writer
        return writer

    def match_existing(self, key: str, sha256: str, digests: dict[str, str]) -> StoredObject:
        """The object already at ``key`` if it holds ``sha256``, else ConflictError.

        Tags are writable by anyone allowed s3:PutObjectTagging, so they are not trusted
        here: without a checksum or metadata digest the object is read and hashed.
        """
        head = self._head(key)
        if head is None:
            raise SinkError(f"sink {self.label!r}: key {key!r} ({self.describe(key)}) "
                            "existed a moment ago and is gone; retry")
        existing, source = self._stored_sha256(key, head, use_tag=False)
        if existing is None:
            h = hashlib.sha256()
            with self.open_read(key) as chunks:
                for chunk in chunks:
                    h.update(chunk)
            existing, source = h.hexdigest(), "read"
        if existing != sha256:
            raise ConflictError(f"sink {self.label!r}: key {key!r} ({self.describe(key)}) "
                                f"already holds different bytes (sha256 {existing}, new "
                                f"{sha256}); the stored object was left untouched")
        extra = {**self._extra(head), "sha256_source": source}
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
        head = self._head(key, **_version(resp))
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
                            extra=self._extra(head))

    # ------------------------------------------------------------------ crash cleanup
    def discard(self, pending: str) -> None:
        try:
            token = json.loads(pending)
            bucket, full_key, nonce = token["bucket"], token["key"], token["writer"]
            upload_id = token.get("upload_id")
            if not all(isinstance(v, str) and v for v in (bucket, full_key, nonce)):
                raise ValueError
        except (ValueError, TypeError, KeyError):
            raise SinkError(f"sink {self.label!r}: refusing to discard {pending!r}: not a "
                            "pending token of an s3 writer") from None
        writer = self.live_writer(nonce)
        if writer is not None:  # still open in this process: it must never commit now
            writer.discard()
        if upload_id:
            self.abort_upload(bucket, full_key, upload_id)
        elif writer is None:
            # The token was recorded before the upload existed: abort what is open at
            # exactly that key (a writer of the same key elsewhere would fail, not corrupt).
            checks.abort_uploads(self, bucket, full_key, exact=True)

    def preflight(self) -> None:
        checks.preflight(self)

    def cleanup(self, older_than: float) -> list[str]:
        return checks.abort_uploads(self, self.bucket, self.prefix, older_than=older_than)
