"""Typed configuration of the ``gcs`` sink (the YAML mapping under ``sinks[]``)."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

from archiver.components import ComponentConfig

KiB = 1 << 10
MiB = 1 << 20
#: GCS resumable uploads take non-final chunks in multiples of 256 KiB.
CHUNK_MULTIPLE = 256 * KiB
#: google-cloud-storage sends at most this much as one multipart (simple) upload.
MAX_SIMPLE_UPLOAD = 8 * MiB
#: custom metadata keys the sink writes itself.
RESERVED_METADATA = frozenset({"sha256"})
STORAGE_CLASSES = frozenset({"STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE", "MULTI_REGIONAL",
                             "REGIONAL", "DURABLE_REDUCED_AVAILABILITY"})
# https://cloud.google.com/storage/docs/buckets#naming (the dotted form may be longer).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_KMS_KEY = re.compile(r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+")


class RetentionConfig(BaseModel):
    """Object retention (``retention:``): applied to every object this sink creates.

    Exactly one of ``retain_days`` (counted from the commit) or ``retain_until`` (a date,
    midnight UTC) is required. ``Locked`` can never be shortened or removed, not even by
    the bucket owner; ``Unlocked`` can be changed by principals holding
    ``storage.objects.overrideUnlockedRetention``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["Unlocked", "Locked"]
    retain_days: int | None = Field(default=None, gt=0, le=36500)
    retain_until: date | None = None

    @model_validator(mode="after")
    def _one_of(self) -> RetentionConfig:
        if (self.retain_days is None) == (self.retain_until is None):
            raise ValueError("give exactly one of 'retain_days' or 'retain_until'")
        if self.retain_until is not None and self.retain_until <= date.today():
            raise ValueError(f"retain_until {self.retain_until} is not in the future")
        return self

    def until(self, now: datetime | None = None) -> datetime:
        """The ``retainUntilTime`` for an object committed at ``now`` (UTC)."""
        if self.retain_until is not None:
            return datetime.combine(self.retain_until, time(0), tzinfo=timezone.utc)
        now = now or datetime.now(timezone.utc)
        return (now + timedelta(days=self.retain_days)).replace(microsecond=0)


class GCSConfig(ComponentConfig):
    """Options of the ``gcs`` sink; see the plugin README for each one."""

    bucket: str
    prefix: str = ""
    project: str | None = None
    credentials_file: Path | None = None
    chunk_size: ByteSize = ByteSize(16 * MiB)
    simple_upload_threshold: ByteSize = ByteSize(8 * MiB)
    checksum: Literal["crc32c", "md5", "both"] = "crc32c"
    retention: RetentionConfig | None = None
    temporary_hold: bool = False
    event_based_hold: bool = False
    kms_key_name: str | None = None
    storage_class: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if v.startswith("gs://"):
            raise ValueError("give the bucket name without 'gs://' (put paths in 'prefix')")
        if not _BUCKET.fullmatch(v) or ".." in v or (len(v) > 63 and "." not in v):
            raise ValueError(f"{v!r} is not a valid GCS bucket name (3-63 characters: "
                             "lowercase letters, digits, '-', '_', '.')")
        return v

    @field_validator("chunk_size")
    @classmethod
    def _chunk(cls, v: int) -> int:
        if v <= 0 or v % CHUNK_MULTIPLE:
            raise ValueError(f"chunk_size {v} must be a positive multiple of 256 KiB "
                             f"({CHUNK_MULTIPLE} bytes), e.g. {16 * MiB} for 16 MiB")
        return v

    @field_validator("simple_upload_threshold")
    @classmethod
    def _threshold(cls, v: int) -> int:
        if not 0 <= v <= MAX_SIMPLE_UPLOAD:
            raise ValueError(f"simple_upload_threshold {v} must be between 0 and "
                             f"{MAX_SIMPLE_UPLOAD} (8 MiB, the largest single-request upload)")
        return v

    @field_validator("storage_class")
    @classmethod
    def _storage_class(cls, v: str | None) -> str | None:
        if v is not None and v.upper() not in STORAGE_CLASSES:
            raise ValueError(f"unknown storage class {v!r} (one of "
                             f"{', '.join(sorted(STORAGE_CLASSES))})")
        return v.upper() if v else v

    @field_validator("kms_key_name")
    @classmethod
    def _kms(cls, v: str | None) -> str | None:
        if v is not None and not _KMS_KEY.fullmatch(v):
            raise ValueError("kms_key_name must look like projects/P/locations/L/keyRings/R/"
                             "cryptoKeys/K (without /cryptoKeyVersions/...)")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str]) -> dict[str, str]:
        clash = RESERVED_METADATA & {k.lower() for k in v}
        if clash:
            raise ValueError(f"metadata key(s) {sorted(clash)} are written by the sink itself")
        return v

    @property
    def compliance(self) -> bool:
        """Whether objects get retention or holds after their bytes are verified."""
        return bool(self.retention or self.temporary_hold or self.event_based_hold)
