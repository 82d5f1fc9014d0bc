"""The ``notify:`` section of the archiver YAML (validated by the core through
``archiver_register_sections``, so errors name ``notify.endpoints[0].url``)."""

from __future__ import annotations

import base64
import binascii
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from archiver.components import ComponentConfig

EVENTS = ("archived", "incomplete", "lost", "nothing_to_store", "expiring")
Event = Literal["archived", "incomplete", "lost", "nothing_to_store", "expiring"]


class Endpoint(BaseModel):
    """One receiver. ``url`` is a secret: Slack and Teams put their token in it."""

    model_config = {"extra": "forbid"}

    name: str = ""                      # what logs call it (default: endpoint-<index>)
    url: SecretStr
    format: Literal["webhook", "slack", "teams"] = "webhook"
    secret: SecretStr | None = None     # webhook only: whsec_<base64> (Standard Webhooks)
    events: list[Event] = Field(default_factory=lambda: ["archived", "incomplete", "lost",
                                                         "expiring"], min_length=1)
    projects: list[str] | None = None   # None: every project
    timeout: float = Field(5.0, gt=0, le=120)        # seconds per request
    attempts: int = Field(4, ge=1, le=20)            # tries per message
    backoff: float = Field(1.0, ge=0, le=60)         # first retry delay, doubled each time
    max_backoff: float = Field(30.0, ge=0, le=3600)
    queue_size: int = Field(1000, ge=1, le=1_000_000)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: SecretStr) -> SecretStr:
        # The message never quotes the URL: it may hold a token.
        try:
            parts = urlsplit(v.get_secret_value())
        except ValueError:
            raise ValueError("is not a URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return v

    @field_validator("secret")
    @classmethod
    def _whsec(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        raw = v.get_secret_value()
        try:
            ok = raw.startswith("whsec_") and len(base64.b64decode(raw[6:], validate=True)) >= 16
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            raise ValueError("must be a Standard Webhooks secret: whsec_ followed by the "
                             "base64 of at least 16 random bytes")
        return v

    @model_validator(mode="after")
    def _secret_for_webhooks_only(self) -> Endpoint:
        if self.secret is not None and self.format != "webhook":
            raise ValueError(f"secret: only a webhook endpoint is signed, not {self.format}")
        return self

    @property
    def key(self) -> bytes | None:
        """The HMAC key: the base64-decoded part of ``whsec_…`` (Standard Webhooks)."""
        if self.secret is None:
            return None
        return base64.b64decode(self.secret.get_secret_value()[6:])

    @property
    def label(self) -> str:
        """``name (scheme://host:port)``: safe for logs (no path, query or userinfo)."""
        parts = urlsplit(self.url.get_secret_value())
        port = f":{parts.port}" if parts.port else ""
        return f"{self.name} ({parts.scheme}://{parts.hostname}{port})"

    def wants(self, event: str, project_id: str) -> bool:
        return event in self.events and (self.projects is None or project_id in self.projects)


class NotifyConfig(ComponentConfig):
    endpoints: list[Endpoint] = Field(default_factory=list)
    #: At process exit, how long undelivered messages may still be tried (seconds).
    flush_timeout: float = Field(5.0, ge=0, le=300)

    @model_validator(mode="after")
    def _names(self) -> NotifyConfig:
        seen: set[str] = set()
        for i, ep in enumerate(self.endpoints):
            ep.name = ep.name or f"endpoint-{i}"
            if ep.name in seen:
                raise ValueError(f"two endpoints are named {ep.name!r}")
            seen.add(ep.name)
        return self
