"""The typed models of the YAML file's top-level keys (``Settings`` and its sections).

Import them from :mod:`archiver.config`; this module holds only the models so that the
loader (:mod:`archiver.config`) and the YAML layer (:mod:`archiver.config_yaml`) stay short.
Every field is documented in docs/configuration.md (tests/test_config_docs.py checks it).
"""

from __future__ import annotations

import math
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
)

from .components import no_repeats


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentSpec(_Strict):
    """``type`` plus the component's own keys (validated by the component's Config)."""

    model_config = ConfigDict(extra="allow")
    type: str


class SinkSpec(ComponentSpec):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    transforms: list[ComponentSpec] = []


# --------------------------------------------------------------------------- value types

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# One \s* only: adjacent optional runs of spaces backtrack quadratically on long input.
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")


def _seconds(value: Any) -> Any:
    """A duration: a number of seconds or ``"30s"``, ``"5m"``, ``"24h"``, ``"7d"``."""
    if isinstance(value, bool):  # `true` is not one second
        raise ValueError("not a duration: a boolean (e.g. 30, 30s, 5m, 24h, 1d)")
    if isinstance(value, str):
        m = _DURATION.fullmatch(value.strip())
        if not m:
            raise ValueError(f"not a duration: {value[:40]!r} (e.g. 30, 30s, 5m, 24h, 1d)")
        return float(m.group(1)) * _UNITS[m.group(2)]
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite duration")
    return value


Seconds = typing.Annotated[float, BeforeValidator(_seconds), AfterValidator(_finite)]


def _whole(value: Any) -> Any:
    """Strict whole numbers: YAML ``true``/``2.5``/``2.0``/``"two"`` are mistakes, not 1/2.

    Digit strings are accepted because ``workers: ${WORKERS}`` interpolates to a string."""
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError(f"must be a whole number, not {str(value).lower()}")
    if isinstance(value, str):
        if not re.fullmatch(r"\s*\d{1,6}\s*", value):
            raise ValueError(f"must be a whole number, not {value[:20]!r}")
        return int(value)
    return value


WholeNumber = typing.Annotated[int, BeforeValidator(_whole)]


def _fmt_s(value: float) -> str:
    return f"{value:g}s"


# --------------------------------------------------------------------------- watch / serve
# Optional sections of `archiver watch` / `archiver serve` (docs/operations.md).

class WatchSettings(_Strict):
    """``watch:`` (used by ``archiver watch`` and ``archiver serve``)."""

    poll_interval: Seconds = 30.0
    expiry_warning: Seconds = Field(86400.0, ge=0)
    grace_period: Seconds = Field(30.0, ge=0)
    retry_max_delay: Seconds = Field(900.0, ge=1)

    @field_validator("poll_interval")
    @classmethod
    def _not_too_fast(cls, value: float) -> float:
        if value < 5:
            raise ValueError("must be at least 5 seconds: the API asks not to be polled faster")
        return value


class WebhookSecrets(_Strict):
    """Where webhook signing secrets come from (``default`` is held as a secret)."""

    default: SecretStr | None = None
    per_job_file: Path | None = None   # YAML/JSON mapping job id -> secret
    per_job_dir: Path | None = None    # one file per job, named by the job id


class ServeSettings(_Strict):
    """``serve:`` the HTTP endpoint of ``archiver serve`` (webhooks, /healthz, /metrics)."""

    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    path: str = Field("/webhooks/plangrep", pattern=r"^/[!-~]*$")
    secrets: WebhookSecrets = Field(default_factory=WebhookSecrets)
    timestamp_tolerance: Seconds = Field(300.0, gt=0)
    insecure_accept_unsigned: bool = False
    queue_size: int = Field(1000, ge=1, le=1_000_000)
    dedupe_size: int = Field(10_000, ge=1, le=10_000_000)
    max_body_bytes: ByteSize = Field(ByteSize(1 << 20), ge=1024, le=64 << 20)
    max_connections: int = Field(64, ge=1, le=4096)


# --------------------------------------------------------------------------- bagit

# bag-info.txt labels archiver writes itself (archiver.compliance.bagit).
BAG_INFO_RESERVED = frozenset({"bagging-date", "payload-oxum", "external-identifier",
                               "bag-software-agent", "plangrep-project-id",
                               "archiver-version", "bag-size"})


class BagitSettings(_Strict):
    """``bagit:``: the BagIt tag files written beside ``data/`` of every archived job."""

    enabled: bool = True
    algorithms: list[Literal["sha256", "sha512", "sha1", "md5"]] = ["sha256"]
    info: dict[str, str | list[str]] = {}

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, algos: list[str]) -> list[str]:
        if "sha256" not in algos:
            raise ValueError("sha256 is required (manifest-sha256.txt is always written)")
        return no_repeats(algos)

    @field_validator("info")
    @classmethod
    def _info(cls, info: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for label in info:
            if label != label.strip() or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}",
                                                           label):
                raise ValueError(f"bag-info label {label[:40]!r}: letters, digits, space, '.', "
                                 "'_', '-' (no ':')")
            if label.lower() in BAG_INFO_RESERVED:
                raise ValueError(f"bag-info label {label!r} is written by archiver itself")
        return info


# --------------------------------------------------------------------------- workers

class LeaseSettings(_Strict):
    """``lease:`` how workers hold jobs in the shared ledger (issue "Many workers, one ledger").

    A worker holds a job for ``ttl`` and renews it every ``heartbeat``; a lease not renewed
    in time is lost and the job goes to another worker. Fields are validated in order, so
    each check below may rely on the fields declared before it."""

    ttl: Seconds = Field(60.0, gt=0.5)
    # validate_default: the default 20 s must also be checked against a shorter ttl.
    heartbeat: Seconds = Field(20.0, gt=0, validate_default=True)
    max_lost: WholeNumber = Field(3, ge=1, le=1000)
    self_fence: Seconds | None = Field(None, gt=0, validate_default=True)

    @field_validator("heartbeat")
    @classmethod
    def _heartbeat(cls, value: float, info: ValidationInfo) -> float:
        ttl = info.data.get("ttl")
        if ttl is not None and value >= ttl:
            hint = "" if value != 20.0 else "; the default heartbeat is 20s: set a shorter one"
            raise ValueError(f"must be shorter than lease.ttl ({_fmt_s(ttl)}){hint}")
        return value

    @field_validator("self_fence")
    @classmethod
    def _self_fence(cls, value: float | None, info: ValidationInfo) -> float | None:
        ttl, heartbeat = info.data.get("ttl"), info.data.get("heartbeat")
        if ttl is None:
            return value
        if value is not None and value >= ttl:
            # Fencing after the lease expired would let two workers run one job.
            raise ValueError(f"must be shorter than lease.ttl ({_fmt_s(ttl)})")
        effective = 0.75 * ttl if value is None else value
        if heartbeat is not None and effective <= heartbeat:
            # Shorter than one heartbeat interval: every worker would fence itself.
            what = "" if value is not None else \
                f"the default 0.75 x lease.ttl ({_fmt_s(effective)}) "
            raise ValueError(f"{what}must be longer than lease.heartbeat ({_fmt_s(heartbeat)})")
        return value

    @property
    def effective_self_fence(self) -> float:
        """Seconds without a successful heartbeat after which a worker stops its jobs."""
        return 0.75 * self.ttl if self.self_fence is None else self.self_fence


class RateLimitSettings(_Strict):
    """``rate_limit:`` one API budget for the whole fleet (:mod:`archiver.budget`): every
    process on the ledger takes its requests from one shared token bucket, and a 429
    ``Retry-After`` pauses them all. Absent: no limit."""

    requests_per_second: float = Field(gt=0, allow_inf_nan=False)
    # validate_default: the default burst is computed from requests_per_second.
    burst: WholeNumber | None = Field(None, ge=1, validate_default=True)

    @field_validator("burst")
    @classmethod
    def _burst(cls, value: int | None, info: ValidationInfo) -> int | None:
        rps = info.data.get("requests_per_second")
        if value is None and rps is not None:
            return max(1, math.ceil(rps))  # one second's worth
        return value


_LEDGER_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}
_LEDGER_HINT = "sqlite:///relative/path, sqlite:////absolute/path or postgresql://user@host/db"


class LedgerSettings(_Strict):
    """``ledger:`` where the job ledger lives. Messages never echo the URL (a password)."""

    url: SecretStr | None = None
    outage_tolerance: Seconds = Field(60.0, ge=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value().strip()
        if not raw:
            raise ValueError(f"is empty ({_LEDGER_HINT}; omit it for state_dir/ledger.sqlite)")
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise ValueError(f"is not a valid URL ({_LEDGER_HINT})") from None
        scheme = _LEDGER_SCHEMES.get(parts.scheme.lower())
        if scheme is None:
            raise ValueError(f"must be a sqlite or postgresql URL ({_LEDGER_HINT})")
        if scheme == "sqlite":
            if parts.netloc or parts.query or parts.fragment or len(parts.path) < 2 \
                    or parts.path.endswith(":memory:"):
                raise ValueError(f"a sqlite URL names one file and nothing else ({_LEDGER_HINT})")
            if parts.path.startswith("/~"):  # expanded here, so every reader of the URL agrees
                home = os.path.expanduser(parts.path[1:])
                if home.startswith("~"):
                    raise ValueError("cannot expand ~ in the sqlite path (no such user or HOME)")
                raw = "sqlite:///" + home
        return SecretStr(raw)

    @property
    def scheme(self) -> str:
        """``"sqlite"`` (also when ``url`` is omitted) or ``"postgresql"``."""
        if self.url is None:
            return "sqlite"
        return _LEDGER_SCHEMES[urlsplit(self.url.get_secret_value()).scheme.lower()]

    def sqlite_path(self, state_dir: str | Path) -> Path | None:
        """The SQLite file (``state_dir/ledger.sqlite`` by default), None for PostgreSQL.

        As in SQLAlchemy, ``sqlite:///x`` is relative (to the working directory) and
        ``sqlite:////x`` absolute; ``~`` is expanded."""
        if self.url is None:
            return Path(state_dir) / "ledger.sqlite"
        if self.scheme != "sqlite":
            return None
        return Path(unquote(urlsplit(self.url.get_secret_value()).path[1:])).expanduser()


class DispatchSettings(_Strict):
    """``dispatch:`` who archives the queued jobs of ``watch``/``serve``
    (:mod:`archiver.dispatch`). ``mode: local``: this process and its ``workers:``;
    another mode names a dispatcher plugin (``celery``) whose options are the top-level
    section of that name."""

    mode: str = Field("local", pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    # Jobs sent and not yet claimed, at most: the broker never holds the whole backlog,
    # so that a job nearing expiry can still jump the queue.
    max_outstanding: WholeNumber = Field(200, ge=1, le=100_000)
    # A job sent this long ago and still unclaimed is sent again (the broker may have
    # lost it: a restart without persistence).
    redispatch_after: Seconds = Field(120.0, ge=1)
    # Jobs expiring sooner than this go out with the highest priority.
    urgent_within: Seconds = Field(86400.0, ge=0)
    # The leader lease of the one dispatching replica (renewed every third of it).
    leader_ttl: Seconds = Field(30.0, ge=3)


# --------------------------------------------------------------------------- top level

class Settings(_Strict):
    source: ComponentSpec
    transforms: list[ComponentSpec] = []
    sinks: list[SinkSpec] = Field(min_length=1)
    state_dir: Path = Path(".archiver")
    concurrency: int = Field(8, ge=1, le=256)
    workers: WholeNumber = Field(1, ge=1, le=64)
    # Read by the runtime: the source's read size unless `source:` sets its own chunk_size.
    chunk_size: ByteSize = Field(ByteSize(1 << 20), ge=4096, le=64 << 20)
    artifact_attempts: int = Field(4, ge=1, le=50)
    bagit: BagitSettings = Field(default_factory=BagitSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    lease: LeaseSettings = Field(default_factory=LeaseSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    rate_limit: RateLimitSettings | None = None
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)

    @field_validator("sinks")
    @classmethod
    def _unique_names(cls, sinks: list[SinkSpec]) -> list[SinkSpec]:
        seen: set[str] = set()
        for sink in sinks:
            if sink.name in seen:
                raise ValueError(f"sink name {sink.name!r} is used twice")
            seen.add(sink.name)
        return sinks
