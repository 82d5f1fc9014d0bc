"""The Azure sink's YAML options, validated without any network access or SDK import.

Secrets (connection string, account key, SAS token) are :class:`pydantic.SecretStr`, so
the config's repr and ``archiver config check`` never show them; write them as
``${VAR}`` in the YAML. No option given = ``DefaultAzureCredential`` (azure-identity).
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ByteSize, ConfigDict, Field, SecretStr, field_validator, \
    model_validator

from archiver.components import ComponentConfig

KiB, MiB = 1 << 10, 1 << 20
MAX_BLOCK_SIZE = 4000 * MiB      # Put Block maximum (service version 2019-12-12 and later)
MAX_PUT_SIZE = 5000 * MiB        # Put Blob maximum
MAX_BLOCKS = 50_000              # committed blocks per blob
MAX_NAME_CHARS = 1024            # blob name length (UTF-16 code units, as the service counts)
MAX_NAME_SEGMENTS = 254          # '/'-separated segments of a blob name
#: Metadata name holding the sha256 (hex) of the stored bytes (set at commit, atomically).
SHA256_METADATA = "sha256"
_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
_META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")  # a C# identifier, as Azure wants


class Immutability(BaseModel):
    """Version-level immutability applied to every blob this sink writes.

    Exactly one of ``retain_days`` (counted from the start of each upload) and
    ``retain_until`` (a date, midnight UTC) sets the policy's expiry.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["Unlocked", "Locked"] = Field(
        description="Unlocked: the policy can still be shortened or removed by a "
                    "principal allowed to; Locked: it can only be extended.")
    retain_days: int | None = Field(None, ge=1, le=146000)
    retain_until: date | None = None
    legal_hold: bool = Field(False, description="Also set a legal hold (no expiry).")

    @model_validator(mode="after")
    def _one(self) -> Immutability:
        if (self.retain_days is None) == (self.retain_until is None):
            raise ValueError("give exactly one of retain_days and retain_until")
        if self.retain_until is not None and self.retain_until <= date.today():
            raise ValueError(f"retain_until {self.retain_until} is not in the future")
        return self

    def until(self, now: datetime | None = None) -> datetime:
        if self.retain_until is not None:
            return datetime.combine(self.retain_until, time(0), tzinfo=timezone.utc)
        now = now or datetime.now(timezone.utc)
        # Whole seconds: the service keeps no more, and the read-back compares exactly.
        return (now + timedelta(days=self.retain_days or 0)).replace(microsecond=0)


class AzureSinkConfig(ComponentConfig):
    """Options of ``type: azure`` (the plugin README has a worked example)."""

    container: str = Field(description="Container name (must exist; see preflight).")
    account_url: str | None = Field(None, description="https://<account>.blob.core."
                                    "windows.net (or an emulator URL); not needed with a "
                                    "connection string.")
    prefix: str = Field("", description="Blob name prefix; 'a' and 'a/' mean the same.")
    connection_string: SecretStr | None = None
    account_name: str | None = Field(None, description="With account_key.")
    account_key: SecretStr | None = None
    sas_token: SecretStr | None = Field(None, description="A container or account SAS "
                                        "(with or without the leading '?').")
    block_size: ByteSize = Field(8 * MiB, ge=64 * KiB, le=MAX_BLOCK_SIZE,
                                 description="Bytes per staged block; objects up to this "
                                             "size are sent with one Put Blob.")
    max_blocks_in_flight: int = Field(4, ge=1, le=64)
    immutability: Immutability | None = None
    access_tier: Literal["Hot", "Cool", "Cold", "Archive"] | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    retries: int = Field(3, ge=0, le=20, description="SDK retries per request.")
    timeout: float = Field(60.0, gt=0, le=3600, description="Seconds to connect / read.")

    @field_validator("container")
    @classmethod
    def _container(cls, v: str) -> str:
        if not _CONTAINER.match(v):
            raise ValueError(f"{v!r} is not a container name (3-63 lowercase letters, "
                             "digits and single hyphens)")
        return v

    @field_validator("account_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("account_url must be an http:// or https:// URL")
        if parts.username or parts.password or parts.query:
            # A secret in the URL would end up in logs: use sas_token / account_key.
            raise ValueError("account_url must not contain credentials or a query "
                             "(put a SAS in sas_token)")
        return v.rstrip("/")

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not _META_KEY.match(key):
                raise ValueError(f"metadata name {key!r}: Azure wants a C# identifier "
                                 "(letters, digits, '_'; not starting with a digit)")
            if key.lower() == SHA256_METADATA:
                raise ValueError(f"metadata name {key!r} is reserved for the stored digest")
            if not value.isascii() or not value.isprintable():
                raise ValueError(f"metadata value of {key!r} must be printable ASCII")
        return v

    @model_validator(mode="after")
    def _auth(self) -> AzureSinkConfig:
        given = [n for n in ("connection_string", "account_key", "sas_token")
                 if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of connection_string, account_key and "
                             f"sas_token (got {', '.join(given)})")
        if self.connection_string is None and not self.account_url:
            raise ValueError("account_url is required unless connection_string is given")
        if self.account_key is not None and not self.account_name:
            raise ValueError("account_key needs account_name")
        return self

    @property
    def auth(self) -> str:
        """Which credential is used: connection_string, account_key, sas or default."""
        if self.connection_string is not None:
            return "connection_string"
        if self.account_key is not None:
            return "account_key"
        if self.sas_token is not None:
            return "sas"
        return "default"

    def memory_bound(self) -> int:
        """Most bytes one open writer holds (plus the chunk being written)."""
        return self.block_size * (1 + self.max_blocks_in_flight)
