"""Online checks before a run (``preflight``) and removal of orphaned multipart uploads.

Both work on the sink's :class:`~archiver_s3.gateway.S3Gateway` (its bucket, prefix and
client), not on the sink: they are procedures over the bucket, not part of the contract.

The write probe creates a multipart upload under ``<prefix>/.archiver-preflight/``, with
every option a real upload carries (checksum, Object Lock, encryption, storage class,
tags), uploads one tiny part and aborts it. It therefore needs exactly the permissions
the sink needs anyway, and leaves nothing behind even in a bucket whose default Object
Lock retention would make a probe *object* undeletable (and the sink never needs
``s3:DeleteObject``, which a compliance archive should deny).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection
from typing import TYPE_CHECKING

from archiver.errors import SinkError
from archiver.keys import join_prefix

from . import awserrors, checksums

if TYPE_CHECKING:
    from .gateway import S3Gateway

PROBE_DIR = ".archiver-preflight"
PROBE_BODY = b"archiver preflight probe\n"


def preflight(gw: "S3Gateway") -> None:
    """Bucket reachable and existing, Object Lock enabled if configured, writes allowed.

    Raises :class:`SinkError` naming the sink and the bucket.
    """
    _bucket_exists(gw)
    if gw.config.object_lock is not None:
        _object_lock_enabled(gw)
    _write_probe(gw)


def _fail(gw: "S3Gateway", message: str) -> SinkError:
    where = f" at {gw.config.endpoint_url}" if gw.config.endpoint_url else ""
    return SinkError(f"sink {gw.label!r}: bucket {gw.bucket!r}{where}: {message}")


def _bucket_exists(gw: "S3Gateway") -> None:
    client = gw.client
    try:
        client.head_bucket(Bucket=gw.bucket)
        return
    except Exception as exc:
        failure: BaseException = exc
    status = awserrors.status(failure)
    if status == 404:
        raise _fail(gw, "the bucket does not exist") from failure
    if status == 301:
        headers = failure.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})  # type: ignore
        region = headers.get("x-amz-bucket-region", "another region")
        raise _fail(gw, f"the bucket is in {region}; set 'region: {region}'") from failure
    if status in (400, 403):
        # HEAD responses have no body; ask again so S3 says why (bad key, signature, policy).
        try:
            client.list_objects_v2(Bucket=gw.bucket, Prefix=gw.prefix, MaxKeys=1)
            return
        except Exception as exc:
            failure = exc
        if awserrors.code(failure) == "NoSuchBucket":
            raise _fail(gw, "the bucket does not exist") from failure
    raise _fail(gw, "cannot access the bucket: "
                    f"{awserrors.describe(failure, 's3:ListBucket')}") from failure


def _object_lock_enabled(gw: "S3Gateway") -> None:
    lock = gw.config.object_lock
    assert lock is not None
    missing = (f"Object Lock is not enabled on the bucket, but the sink asks for "
               f"object_lock mode {lock.mode}; enable it on the bucket (it needs "
               "versioning) or remove object_lock")
    try:
        conf = gw.client.get_object_lock_configuration(Bucket=gw.bucket)
    except Exception as exc:
        if awserrors.code(exc) == "ObjectLockConfigurationNotFoundError":
            raise _fail(gw, missing) from exc
        raise _fail(gw, "cannot read the Object Lock configuration: " + awserrors.describe(
            exc, "s3:GetBucketObjectLockConfiguration")) from exc
    if conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
        raise _fail(gw, missing)


def _write_permissions(gw: "S3Gateway") -> str:
    cfg = gw.config
    needed = ["s3:PutObject", "s3:AbortMultipartUpload"]
    if cfg.object_lock:
        needed.append("s3:PutObjectRetention")
        if cfg.object_lock.legal_hold:
            needed.append("s3:PutObjectLegalHold")
    if cfg.tags:
        needed.append("s3:PutObjectTagging")
    if cfg.sse == "aws:kms":
        needed.append("kms:GenerateDataKey on the key")
    return ", ".join(needed)


def _write_probe(gw: "S3Gateway") -> None:
    client, cfg = gw.client, gw.config
    key = join_prefix(cfg.prefix, f"{PROBE_DIR}/{uuid.uuid4().hex}")
    where = f"s3://{gw.bucket}/{gw.prefix}"
    try:
        upload_id = gw.start_upload(key, {"archiver-preflight": "1"})
    except Exception as exc:
        raise _fail(gw, f"writing under {where} is not permitted: "
                        f"{awserrors.describe(exc, _write_permissions(gw))}") from exc
    failure: SinkError | None = None
    try:
        digest = checksums.part_checksum(cfg.checksum_algorithm, PROBE_BODY)
        client.upload_part(Bucket=gw.bucket, Key=key, UploadId=upload_id, PartNumber=1,
                           Body=PROBE_BODY, ChecksumAlgorithm=cfg.checksum_algorithm,
                           **{f"Checksum{cfg.checksum_algorithm}": checksums.b64(digest)})
    except Exception as exc:
        failure = _fail(gw, f"uploading data under {where} failed: "
                            f"{awserrors.describe(exc)}")
        failure.__cause__ = exc
    try:
        client.abort_multipart_upload(Bucket=gw.bucket, Key=key, UploadId=upload_id)
    except Exception as exc:
        raise _fail(gw, f"aborting the probe upload {upload_id} failed: "
                        f"{awserrors.describe(exc, 's3:AbortMultipartUpload')}; "
                        "'archiver cleanup' removes it") from exc
    if failure is not None:
        raise failure


def abort_uploads(gw: "S3Gateway", bucket: str, prefix: str, *,
                  older_than: float | None = None, exact: bool = False,
                  spare: Collection[str] = ()) -> list[str]:
    """Abort open multipart uploads whose key starts with ``prefix`` (or equals it, with
    ``exact``) and that were initiated at least ``older_than`` seconds ago; the uploads
    in ``spare`` (those of writers open in this process) are left alone. Returns one line
    per aborted upload."""
    cutoff = None if older_than is None else time.time() - older_than
    removed: list[str] = []
    for upload in gw.open_uploads(bucket, prefix):
        key = gw.field(upload, "Key", "ListMultipartUploads")
        upload_id = gw.field(upload, "UploadId", "ListMultipartUploads")
        initiated = upload.get("Initiated")
        if (exact and key != prefix) or upload_id in spare:
            continue
        if cutoff is not None and initiated is not None and initiated.timestamp() > cutoff:
            continue
        gw.abort_upload(bucket, key, upload_id)
        when = initiated.isoformat() if initiated is not None else "unknown"
        removed.append(f"{gw.label}: aborted multipart upload {upload_id} of "
                       f"s3://{bucket}/{key} (initiated {when})")
    return removed
