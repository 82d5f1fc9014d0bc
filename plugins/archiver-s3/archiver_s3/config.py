"""The S3 sink's YAML options, validated without any network access.

Sizes accept a byte count or a string such as ``16MiB``/``64 MB``. Credentials are not an
option: boto3 finds them through its normal chain (environment, ``profile``, instance or
container role), so no secret ever has to appear in the YAML file.
"""

from __future__ import annotations

import re
import string
from datetime import date, datetime, time, timedelta, timezone
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

from archiver.components import ComponentConfig

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
MIN_PART_SIZE = 5 * MiB          # S3's minimum for every part but the last
MAX_PUT_SIZE = 5 * GiB           # S3's maximum for one PutObject / UploadPart
MAX_PARTS = 10_000
#: Object metadata key holding the sha256 (hex) of the stored bytes.
SHA256_METADATA = "sha256"
#: Object tag holding the sha256 of multipart objects (their metadata is fixed before the
#: digest is known).
SHA256_TAG = "archiver-sha256"

_META_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_PRINTABLE = set(string.printable) - set("\t\n\r\x0b\x0c")


# Sizes accept bytes or units ("16MiB", "64 MB"), parsed by pydantic's ByteSize.
Size = ByteSize


class ObjectLock(BaseModel):
    """S3 Object Lock applied to every object this sink writes.

    Exactly one of ``retain_days`` (counted from the moment each upload starts) and
    ``retain_until`` (a calendar date, midnight UTC) sets the retain-until date.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["GOVERNANCE", "COMPLIANCE"] = Field(
        description="GOVERNANCE: users with s3:BypassGovernanceRetention may shorten or "
                    "remove it; COMPLIANCE: nobody can, not even the root account.")
    retain_days: int | None = Field(None, ge=1, le=36500,
                                    description="Retain each object this many days.")
    retain_until: date | None = Field(None, description="Retain every object until this "
                                                        "date (midnight UTC).")
    legal_hold: bool = Field(False, description="Also place a legal hold (no expiry).")

    @model_validator(mode="after")
    def _one_retention(self) -> ObjectLock:
        if (self.retain_days is None) == (self.retain_until is None):
            raise ValueError("give exactly one of retain_days and retain_until")
        if self.retain_until is not None and self.retain_until <= date.today():
            raise ValueError(f"retain_until {self.retain_until} is not in the future")
        return self

    def retain_until_datetime(self, now: datetime | None = None) -> datetime:
        if self.retain_until is not None:
            return datetime.combine(self.retain_until, time(0), tzinfo=timezone.utc)
        now = now or datetime.now(timezone.utc)
        # Whole seconds: S3 keeps no more, and the read-back after commit compares exactly.
        return (now + timedelta(days=self.retain_days or 0)).replace(microsecond=0)


class S3SinkConfig(ComponentConfig):
    """Options of ``type: s3`` (see the plugin README for a worked example)."""

    bucket: str = Field(description="Bucket name (must exist; see preflight).")
    prefix: str = Field("", description="Key prefix; 'archive' and 'archive/' mean the same.")
    region: str | None = Field(None, description="AWS region; default from boto3's chain.")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. "
                                                       "http://127.0.0.1:9000.")
    profile: str | None = Field(None, description="Named profile of ~/.aws/config.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="Bucket in the path or the host name (S3-compatible stores "
                            "often need 'path').")
    part_size: Size = Field(16 * MiB, ge=MIN_PART_SIZE, le=MAX_PUT_SIZE,
                            description="Bytes per multipart part (>= 5 MiB).")
    multipart_threshold: Size = Field(16 * MiB, ge=0, le=MAX_PUT_SIZE,
                                      description="Objects up to this size use one "
                                                  "PutObject; larger ones a multipart upload.")
    max_parts_in_flight: int = Field(4, ge=1, le=64,
                                     description="Parts uploading at once per object.")
    checksum_algorithm: Literal["SHA256", "CRC32C"] = Field(
        "SHA256", description="Checksum S3 verifies on upload and stores.")
    object_lock: ObjectLock | None = None
    storage_class: str | None = Field(None, pattern=r"^[A-Z][A-Z0-9_]*$",
                                      description="e.g. STANDARD_IA, GLACIER_IR, "
                                                  "DEEP_ARCHIVE.")
    sse: Literal["AES256", "aws:kms"] | None = Field(None, description="Server-side "
                                                                       "encryption.")
    kms_key_id: str | None = Field(None, description="KMS key for sse: aws:kms.")
    metadata: dict[str, str] = Field(default_factory=dict,
                                     description="User metadata (x-amz-meta-*) on every "
                                                 "object.")
    tags: dict[str, str] = Field(default_factory=dict, description="Object tags on every "
                                                                   "object (at most 9).")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}", v):
            raise ValueError(f"{v!r} is not a bucket name (letters, digits, '.', '-', '_'; "
                             "no '/' or spaces)")
        return v

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("endpoint_url must be an http:// or https:// URL")
        if parts.username or parts.password:
            # A secret in the URL would end up in logs; credentials go through boto3's chain.
            raise ValueError("endpoint_url must not contain credentials")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not _META_KEY.match(key):
                raise ValueError(f"metadata key {key!r}: use lowercase letters, digits, "
                                 "'.', '-', '_'")
            if key == SHA256_METADATA:
                raise ValueError(f"metadata key {key!r} is reserved for the stored digest")
            if not set(value) <= _PRINTABLE:
                raise ValueError(f"metadata value of {key!r} must be printable ASCII")
        if sum(len(k) + len(x) for k, x in v.items()) > 1500:
            raise ValueError("metadata is too large (S3 allows 2 KB in all, and the sink "
                             "adds its own keys)")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 9:
            raise ValueError("at most 9 tags (S3 allows 10 and the sink uses one)")
        for key, value in v.items():
            if not 1 <= len(key) <= 128 or len(value) > 256 or key.lower().startswith("aws:"):
                raise ValueError(f"tag {key!r}: keys 1-128 characters, not starting with "
                                 "'aws:'; values up to 256")
            if key == SHA256_TAG:
                raise ValueError(f"tag {key!r} is reserved for the stored digest")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> S3SinkConfig:
        if self.kms_key_id and self.sse != "aws:kms":
            raise ValueError("kms_key_id needs sse: aws:kms")
        return self

    def memory_bound(self) -> int:
        """Most bytes one open writer holds (plus the chunk being written)."""
        return max(self.multipart_threshold, self.part_size) + \
            self.max_parts_in_flight * self.part_size
