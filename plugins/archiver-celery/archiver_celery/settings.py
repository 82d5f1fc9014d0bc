"""The ``celery:`` section of the archiver config (options of ``dispatch.mode: celery``).

Only the broker and the knobs that differ between deployments are options; everything a
correct archiver worker needs (late acks, prefetch 1, no result backend, no cancellation of
running tasks when the broker connection blips) is fixed in :mod:`archiver_celery.app`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import ByteSize, Field, SecretStr, field_validator

from archiver.components import ComponentConfig
from archiver.config import Seconds

TRANSPORTS = {"redis": "redis", "rediss": "redis", "amqp": "amqp", "amqps": "amqp",
              "pyamqp": "amqp"}
_HINT = "redis://host:6379/0, rediss://…, amqp://user@host:5672/vhost or amqps://…"


class CeleryConfig(ComponentConfig):
    """``celery:`` options. ``broker_url`` is a secret (it may hold a password): write it
    as ``${ARCHIVER_BROKER_URL}``; it is never logged or shown."""

    broker_url: SecretStr
    queue: str = Field("archiver", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    # Redis redelivers a task still running after this long to another worker: it must
    # exceed the longest job (a 10 GiB artifact at 25 MB/s takes ~7 min; 12 h is ample).
    # A redelivered task only finds the job leased, but its download would be wasted.
    visibility_timeout: Seconds = Field(43200.0, ge=1)
    # Worker recycling: a worker process is replaced after this many jobs (memory
    # fragmentation of long-lived processes) or once its resident memory passes the limit.
    max_tasks_per_child: int | None = Field(500, ge=1)
    max_memory_per_child: ByteSize | None = Field(None, ge=64 << 20)
    connect_timeout: Seconds = Field(10.0, gt=0)

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value().strip()
        try:
            scheme = urlsplit(raw).scheme.lower()
        except ValueError:
            raise ValueError(f"is not a valid URL ({_HINT})") from None
        if scheme not in TRANSPORTS:
            # the scheme alone: the rest may hold a password
            raise ValueError(f"must be a Redis or RabbitMQ URL ({_HINT}); got scheme "
                             f"{scheme or '(none)'!r}")
        return SecretStr(raw)

    @property
    def transport(self) -> str:
        """``"redis"`` or ``"amqp"``."""
        return TRANSPORTS[urlsplit(self.broker_url.get_secret_value()).scheme.lower()]


def safe_broker(config: CeleryConfig) -> str:
    """The broker URL without user or password, for messages."""
    parts = urlsplit(config.broker_url.get_secret_value())
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
