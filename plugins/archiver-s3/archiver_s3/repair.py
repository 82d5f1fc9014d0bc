"""Replacing a damaged object, for ``archiver repair`` only (:meth:`S3Sink.open_repair_writer`).

S3 never loses the damaged bytes here: repair replaces an object only in a bucket with
versioning enabled (Object Lock implies it), where the good bytes become the newest
version and the damaged one stays, with its own lock, as an older version. In a bucket
without versioning an upload would destroy the damaged object, so repair refuses and
says what an operator can do.

The upload protocol is :class:`~archiver_s3.writer.S3Writer`'s, unchanged; only the
precondition differs: PutObject and CompleteMultipartUpload carry ``If-Match`` with the
damaged object's ETag instead of ``If-None-Match: *``. So the new version is created only
while the key still holds the object judged damaged; if anything else got there first,
S3 answers 412 and the writer compares digests as usual (the same bytes: success,
``existed=True``; other bytes: ConflictError, nothing replaced).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from archiver.errors import SinkError
from archiver.model import StoredObject

from . import awserrors
from .body import BufferBody
from .writer import S3Writer

if TYPE_CHECKING:
    from .gateway import S3Gateway
    from .objectlock import Lock
    from .sink import S3Sink


def versioning_status(gateway: S3Gateway) -> str:
    """``Enabled``, ``Suspended`` or ``""`` (never enabled): GetBucketVersioning, which
    needs ``s3:GetBucketVersioning``."""
    try:
        resp = gateway.client.get_bucket_versioning(Bucket=gateway.bucket)
    except Exception as exc:
        raise gateway.error("GetBucketVersioning", exc) from exc
    return str(resp.get("Status") or "")


def refuse_unversioned(sink: S3Sink, key: str, status: str) -> SinkError:
    where = sink.describe(key)
    state = "versioning suspended" if status == "Suspended" else "no versioning"
    return SinkError(
        f"sink {sink.label!r}: {where}: the bucket has {state}, so replacing the damaged "
        "object would destroy it; an operator must either enable versioning (aws s3api "
        f"put-bucket-versioning --bucket {sink.gateway.bucket} --versioning-configuration "
        f"Status=Enabled) or move the object aside (aws s3 mv {where} <elsewhere>), then "
        "run archiver repair again")


class _IfMatchGateway:
    """The sink's gateway as a repair writer sees it: objects are created with
    ``If-Match: <etag>`` (module docstring); everything else is the sink's gateway."""

    def __init__(self, gateway: S3Gateway, etag: str):
        self._gw, self._etag = gateway, etag

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gw, name)

    def _create(self, call, **kwargs) -> dict | None:
        try:
            return self._gw._conditional(call, IfMatch=self._etag, **kwargs)
        except Exception as exc:
            if awserrors.code(exc) in awserrors.PRECONDITION_FAILED:
                return None  # the key changed since it was judged damaged: compare
            raise

    def put_new(self, full_key: str, body: bytearray, metadata: dict[str, str],
                checksum: str, lock: Lock | None = None) -> dict | None:
        gw = self._gw
        return self._create(gw.client.put_object, Body=BufferBody(body),
                            **{f"Checksum{gw.config.checksum_algorithm}": checksum},
                            **gw.object_params(full_key, metadata, lock))

    def complete_new(self, full_key: str, upload_id: str, parts: list[dict], size: int,
                     checksum: dict[str, str]) -> dict | None:
        return self._create(self._gw.client.complete_multipart_upload, Bucket=self._gw.bucket,
                            Key=full_key, UploadId=upload_id,
                            MultipartUpload={"Parts": parts}, MpuObjectSize=size,
                            **checksum)


class S3RepairWriter(S3Writer):
    """Uploads the good bytes as the newest version of a key holding a damaged object
    (``head``: its HeadObject); ``StoredObject.extra["replaced"]`` names the version
    that keeps the damaged bytes."""

    def __init__(self, sink: S3Sink, key: str, full_key: str, metadata: dict[str, str],
                 head: dict):
        super().__init__(sink, key, full_key, metadata)
        self._damaged = {"version_id": head.get("VersionId"), "etag": head.get("ETag")}
        self._gw = _IfMatchGateway(sink.gateway, str(head.get("ETag")))

    def commit(self, digests: dict[str, str]) -> StoredObject:
        stored = super().commit(digests)
        if not stored.existed:
            version = self._damaged["version_id"]
            stored.extra["replaced"] = {
                **{k: v for k, v in self._damaged.items() if v},
                "kept_at": f"{self._sink.describe(self.key)}?versionId={version}"}
        return stored
