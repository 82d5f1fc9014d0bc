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

Nothing is taken on trust after a commit (:meth:`S3Gateway.verify_stored`,
:meth:`S3Gateway.match_existing`): HeadObject must report the size and checksum we sent
and, with ``object_lock``, the mode, a retain-until date no earlier than ours and the
legal hold. What is missing or shorter is applied after the fact (PutObjectRetention,
PutObjectLegalHold) and read back again; if it still falls short the commit fails, naming
what was wanted and what S3 holds. Every field read from a reply is checked: a reply cut
short by the network (a HEAD whose headers stop half way parses as a success) is a
:class:`~archiver_s3.awserrors.RetryableSinkError`, never a KeyError.

Requests go out without ``Expect: 100-continue``: botocore adds it to every file-like
body, and a connection closed right after the interim ``100 Continue`` line makes
botocore read the closed socket forever at 100 % CPU. Bodies stay seekable views
(:class:`~archiver_s3.body.BufferBody`) so nothing is copied; the price is that a
request S3 refuses (412, 403) has already sent its body.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator
from urllib.parse import quote, urlencode

from archiver import cancel
from archiver.errors import ConflictError, PluginError, SinkError
from archiver.keys import join_prefix
from archiver.model import StoredObject

from . import awserrors, checksums
from .awserrors import RetryableSinkError
from .body import BufferBody
from .connections import make_cancellable
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


def _no_expect(request, **kwargs) -> None:
    """botocore ``before-send`` handler: drop ``Expect: 100-continue`` (module docstring).
    The header is not signed, so removing it here leaves the signature valid."""
    request.headers.pop("Expect", None)


#: Object Lock modes, weakest first: COMPLIANCE also satisfies a wanted GOVERNANCE.
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
#: An object found at the key (not created by this writer) holds enough retention if its
#: retain-until is no more than this before LastModified + retain_days: the date was
#: counted from the start of its upload, which we do not know. (With ``retain_until``
#: the date is known: one second.)
EXISTING_SLACK = timedelta(days=1)
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class Lock:
    """The Object Lock an object must carry."""

    mode: str
    until: datetime
    legal_hold: bool

    def params(self) -> dict[str, Any]:
        """PutObject / CreateMultipartUpload arguments setting this lock."""
        out: dict[str, Any] = {"ObjectLockMode": self.mode,
                               "ObjectLockRetainUntilDate": self.until}
        if self.legal_hold:
            out["ObjectLockLegalHoldStatus"] = "ON"
        return out

    def __str__(self) -> str:
        return (f"mode {self.mode} until {self.until.isoformat()}"
                + (", legal hold ON" if self.legal_hold else ""))


def found_lock(head: dict) -> str:
    """What HeadObject reports about an object's lock, in the words of :class:`Lock`."""
    mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
    hold = head.get("ObjectLockLegalHoldStatus")
    parts = []
    if mode or until:
        parts.append(f"mode {mode or 'none'} until "
                     f"{until.isoformat() if isinstance(until, datetime) else until or 'none'}")
    if hold:
        parts.append(f"legal hold {hold}")
    return ", ".join(parts) or "no Object Lock"


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
    def wanted_lock(self) -> Lock | None:
        """The lock an object uploaded from now on must carry (None: no ``object_lock``)."""
        lock = self.config.object_lock
        if lock is None:
            return None
        return Lock(lock.mode, lock.retain_until_datetime(), lock.legal_hold)

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

    # ------------------------------------------------------------------ after a commit
    def match_existing(self, key: str, sha256: str, digests: dict[str, str]) -> StoredObject:
        """The object already at ``key`` if it holds ``sha256``, else ConflictError.

        Tags are writable by anyone allowed s3:PutObjectTagging, so they are not trusted
        here: without a checksum or metadata digest the object is read and hashed, and
        then gets the ``archiver-sha256`` tag if it lacks it (a multipart commit cut
        short between CompleteMultipartUpload and tagging: the tag is there however the
        object got committed). Its Object Lock is confirmed and completed as for a new
        object, counted from its LastModified (:meth:`existing_lock`).
        """
        head = self.head(key)
        if head is None:
            raise RetryableSinkError(f"sink {self.label!r}: key {key!r} "
                                     f"({self.describe(key)}) existed a moment ago and is "
                                     "gone; retry")
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
        if source == "read":
            self.ensure_sha256_tag(key, head, sha256)
        lock = self.config.object_lock
        head, applied = self.confirm_lock(
            key, head, self.existing_lock(key, head),
            slack=EXISTING_SLACK if lock and lock.retain_days else _SECOND)
        extra = {**self.facts(head), "sha256_source": source}
        if applied:
            extra["object_lock_applied_after_commit"] = True
        return StoredObject(sink=self.label, key=key, size=head["ContentLength"],
                            digests=dict(digests),
                            provider_checksum=checksums.provider_checksum(head),
                            location=self.describe(key), existed=True, extra=extra)

    def _put_tags(self, key: str, version: dict[str, str], tags: dict[str, str]) -> None:
        try:
            self.client.put_object_tagging(
                Bucket=self.bucket, Key=self.full_key(key),
                Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
                **version)
        except Exception as exc:  # the object is complete and verified; only stat suffers
            log.warning("sink %s: %s: could not tag the sha256 (%s); stat() will not report "
                        "it", self.label, self.describe(key), awserrors.describe(exc))

    def tag_sha256(self, key: str, version: str | None, sha256: str) -> None:
        """Record the digest of a multipart object as a tag (with the configured tags)."""
        self._put_tags(key, _version({"VersionId": version}),
                       {**self.config.tags, SHA256_TAG: sha256})

    def ensure_sha256_tag(self, key: str, head: dict, sha256: str) -> None:
        """Add the ``archiver-sha256`` tag (and configured tags it lacks) to an object whose
        bytes were just hashed to ``sha256``; tags already there are kept."""
        version = _version(head)
        try:
            resp = self.client.get_object_tagging(Bucket=self.bucket, Key=self.full_key(key),
                                                  **version)
        except Exception as exc:
            log.warning("sink %s: %s: could not read the tags (%s); the sha256 tag is not "
                        "added", self.label, self.describe(key), awserrors.describe(exc))
            return
        tags = {t["Key"]: t.get("Value", "") for t in resp.get("TagSet") or []
                if isinstance(t, dict) and t.get("Key")}
        if tags.get(SHA256_TAG) == sha256:
            return
        log.info("sink %s: %s: adding the missing %s tag", self.label, self.describe(key),
                 SHA256_TAG)
        self._put_tags(key, version, {**self.config.tags, **tags, SHA256_TAG: sha256})

    def verify_stored(self, key: str, resp: dict, digests: dict[str, str], expected: str,
                      kind: str, size: int, lock: Lock | None = None) -> StoredObject:
        """Check what S3 reports for the object just committed: its size, the checksum it
        computed against ``expected`` (ours) and the Object Lock against ``lock`` (what
        the upload asked for; see :meth:`confirm_lock`)."""
        version = _version(resp)
        head = self.head(key, **version)
        if head is None:
            raise RetryableSinkError(f"sink {self.label!r}: key {key!r} "
                                     f"({self.describe(key)}) is missing right after it was "
                                     "committed")
        checksum = checksums.provider_checksum(resp) or checksums.provider_checksum(head, kind)
        if not checksum:
            # A reply cut short lacks it just as a store that never reports checksums does:
            # ask once more before settling for none.
            again = self.head(key, **version)
            if again is not None:
                head, checksum = again, checksums.provider_checksum(again, kind)
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
        head, applied = self.confirm_lock(key, head, lock)
        extra = self.facts(head)
        if applied:
            extra["object_lock_applied_after_commit"] = True
        return StoredObject(sink=self.label, key=key, size=size, digests=dict(digests),
                            provider_checksum=checksum, location=self.describe(key),
                            extra=extra)

    # ------------------------------------------------------------------ object lock
    def existing_lock(self, key: str, head: dict) -> Lock | None:
        """The lock an object found at ``key`` must carry: the configured mode and legal
        hold, retained until LastModified + ``retain_days`` (or ``retain_until``)."""
        lock = self.config.object_lock
        if lock is None:
            return None
        created = _utc(self.field(head, "LastModified", "HeadObject", key))
        now = datetime.now(timezone.utc)
        return Lock(lock.mode, lock.retain_until_datetime(now=min(created, now)),
                    lock.legal_hold)

    @staticmethod
    def lock_shortfall(head: dict, wanted: Lock, slack: timedelta = _SECOND) -> set[str]:
        """Which of ``mode``, ``until``, ``legal_hold`` HeadObject shows falling short of
        ``wanted`` (COMPLIANCE satisfies GOVERNANCE; a later date satisfies an earlier)."""
        short = set()
        mode = head.get("ObjectLockMode")
        if mode not in LOCK_MODES or LOCK_MODES.index(mode) < LOCK_MODES.index(wanted.mode):
            short.add("mode")
        until = head.get("ObjectLockRetainUntilDate")
        if not isinstance(until, datetime) or _utc(until) < wanted.until - slack:
            short.add("until")
        if wanted.legal_hold and head.get("ObjectLockLegalHoldStatus") != "ON":
            short.add("legal_hold")
        return short

    def confirm_lock(self, key: str, head: dict, wanted: Lock | None, *,
                     slack: timedelta = _SECOND) -> tuple[dict, bool]:
        """``(head, applied)``: HeadObject of ``key`` once its Object Lock satisfies
        ``wanted``; ``applied`` if that took PutObjectRetention / PutObjectLegalHold.

        What is missing or shorter is applied (the stronger of both modes, the later of
        both dates, legal hold ON) and read back. If S3 still reports less: SinkError
        naming the sink, the key, what was wanted and what S3 holds; the object stays
        (it cannot be deleted, and need not be: the next attempt finds it and tries again).
        """
        if wanted is None:
            return head, False
        short = self.lock_shortfall(head, wanted, slack)
        if not short:
            return head, False
        log.warning("sink %s: %s: S3 reports %s after the commit, wanted %s; applying it",
                    self.label, self.describe(key), found_lock(head), wanted)
        version, failures = _version(head), []
        if short & {"mode", "until"}:
            mode, until = wanted.mode, wanted.until
            found_mode = head.get("ObjectLockMode")
            if found_mode in LOCK_MODES and LOCK_MODES.index(found_mode) > \
                    LOCK_MODES.index(mode):
                mode = found_mode
            found_until = head.get("ObjectLockRetainUntilDate")
            if isinstance(found_until, datetime) and _utc(found_until) > until:
                until = _utc(found_until)
            try:
                self.client.put_object_retention(
                    Bucket=self.bucket, Key=self.full_key(key),
                    Retention={"Mode": mode, "RetainUntilDate": until}, **version)
            except Exception as exc:
                failures.append("PutObjectRetention: " + awserrors.describe(
                    exc, "s3:PutObjectRetention"))
        if "legal_hold" in short:
            try:
                self.client.put_object_legal_hold(
                    Bucket=self.bucket, Key=self.full_key(key), LegalHold={"Status": "ON"},
                    **version)
            except Exception as exc:
                failures.append("PutObjectLegalHold: " + awserrors.describe(
                    exc, "s3:PutObjectLegalHold"))
        again = self.head(key, **version)
        if again is None:
            raise RetryableSinkError(f"sink {self.label!r}: key {key!r} "
                                     f"({self.describe(key)}) vanished while its Object "
                                     "Lock was applied")
        if not self.lock_shortfall(again, wanted, slack):
            return again, True
        why = "; ".join(failures) or ("S3 accepted the request; HeadObject shows Object "
                                      "Lock only to callers allowed s3:GetObjectRetention "
                                      "and s3:GetObjectLegalHold")
        raise SinkError(f"sink {self.label!r}: key {key!r} ({self.describe(key)}): Object "
                        f"Lock not in force after the commit: wanted {wanted}, S3 holds "
                        f"{found_lock(again)} ({why}); the object is stored but not counted "
                        "as archived, the next attempt applies the lock again")

    def retention_in_force(self, key: str) -> dict[str, Any]:
        """The Object Lock S3 reports for ``key`` now (``Sink.retention_in_force``)."""
        head = self.head(key)
        if head is None:
            raise SinkError(f"sink {self.label!r}: no object at key {key!r} "
                            f"({self.describe(key)})")
        out: dict[str, Any] = {}
        if head.get("ObjectLockMode"):
            out["mode"] = head["ObjectLockMode"]
        until = head.get("ObjectLockRetainUntilDate")
        if isinstance(until, datetime):
            out["retain_until"] = _utc(until).isoformat()
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            out["legal_hold"] = True
        return out


def _utc(when: datetime) -> datetime:
    """``when`` in UTC (botocore parses dates in the local zone or UTC; naive means UTC)."""
    if not isinstance(when, datetime):
        raise TypeError(f"not a datetime: {when!r}")
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)
