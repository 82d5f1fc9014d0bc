"""YAML configuration: parse, interpolate ``${VAR}``, validate into typed models.

Every error names the YAML path at fault (``sinks[1].root``) and, where the YAML parser
knows it, the line. Validation performs no network or disk I/O: component configs are
checked against the ``Config`` model of the registered component class only.

Relative paths (``state_dir``, a local sink's ``root``) are relative to the working
directory the command runs in, as with the AWS CLI and rclone.
"""

from __future__ import annotations

import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from .components import ComponentConfig, no_repeats
from .errors import ConfigError, PluginError
from .registry import Registry

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentSpec(_Strict):
    """``type`` plus the component's own keys (validated by the component's Config)."""

    model_config = ConfigDict(extra="allow")
    type: str


class SinkSpec(ComponentSpec):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    transforms: list[ComponentSpec] = []


# --------------------------------------------------------------------------- watch / serve
# Optional sections of `archiver watch` / `archiver serve` (docs/operations.md).

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _seconds(value: Any) -> Any:
    """A duration: a number of seconds or ``"30s"``, ``"5m"``, ``"24h"``, ``"7d"``."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
        if not m:
            raise ValueError(f"not a duration: {value!r} (e.g. 30, 30s, 5m, 24h, 1d)")
        return float(m.group(1)) * _UNITS[m.group(2)]
    return value


Seconds = typing.Annotated[float, BeforeValidator(_seconds)]


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
                raise ValueError(f"bag-info label {label!r}: letters, digits, space, '.', '_', "
                                 "'-' (no ':')")
            if label.lower() in BAG_INFO_RESERVED:
                raise ValueError(f"bag-info label {label!r} is written by archiver itself")
        return info


class Settings(_Strict):
    source: ComponentSpec
    transforms: list[ComponentSpec] = []
    sinks: list[SinkSpec] = Field(min_length=1)
    state_dir: Path = Path(".archiver")
    concurrency: int = Field(8, ge=1, le=256)
    chunk_size: ByteSize = Field(ByteSize(1 << 20), ge=4096, le=64 << 20)
    artifact_attempts: int = Field(4, ge=1, le=50)
    bagit: BagitSettings = Field(default_factory=BagitSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    @field_validator("sinks")
    @classmethod
    def _unique_names(cls, sinks: list[SinkSpec]) -> list[SinkSpec]:
        seen: set[str] = set()
        for sink in sinks:
            if sink.name in seen:
                raise ValueError(f"sink name {sink.name!r} is used twice")
            seen.add(sink.name)
        return sinks


@dataclass
class Built:
    """A validated component: its class and typed config, with the YAML path it came from."""

    cls: type
    config: ComponentConfig
    path: str
    label: str = ""


@dataclass
class LoadedConfig:
    settings: Settings
    source: Built
    transforms: list[Built]
    sinks: list[Built]
    sink_transforms: dict[str, list[Built]] = field(default_factory=dict)
    file: str = ""


# --------------------------------------------------------------------------- YAML

def _line_map(node: yaml.Node, path: str = "", out: dict[str, int] | None = None) -> dict[str, int]:
    """YAML path -> 1-based line, for error messages."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            sub = f"{path}.{k.value}" if path else str(k.value)
            out[sub] = k.start_mark.line + 1
            _line_map(v, sub, out)
            out[sub] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_map(v, f"{path}[{i}]", out)
    return out


def _interpolate(value: Any, path: str, env: dict[str, str], errors: _Errors) -> Any:
    """Replace ``${VAR}`` in every string (``$$`` is a literal ``$``); unset is an error."""
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), env, errors)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", env, errors) for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            if m.group(0) == "$$":
                return "$"
            if m.group(1) not in env:
                if errors is None:
                    return m.group(0)  # left as written; the caller needs no secret
                errors.add(path, f"environment variable {m.group(1)} is not set")
                return ""
            return env[m.group(1)]
        return _VAR.sub(sub, value)
    return value


def _fmt_loc(loc: tuple, prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Errors:
    def __init__(self, file: str, lines: dict[str, int]):
        self.file, self.lines, self.items = file, lines, []

    def add(self, path: str, msg: str) -> None:
        line, probe = None, path
        while probe and line is None:
            line = self.lines.get(probe)
            probe = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", probe) if line is None else probe
        where = f"{self.file}:{line}: " if line else f"{self.file}: "
        self.items.append(f"{where}{path or '(top level)'}: {msg}")

    def add_validation(self, exc: ValidationError, prefix: str = "") -> None:
        for err in exc.errors(include_url=False, include_input=False):
            loc = tuple(p for p in err["loc"]
                        if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            self.add(_fmt_loc(loc, prefix), msg)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(self.items))


def parse_yaml(text: str, file: str = "<config>") -> tuple[Any, dict[str, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark else file
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if node is None or not isinstance(data, dict):
        raise ConfigError(f"{file}: the configuration must be a YAML mapping")
    return data, _line_map(node)


def _build(reg: Registry, kind: str, spec: ComponentSpec, path: str, errors: _Errors,
           label: str = "") -> Built | None:
    try:
        cls = reg.get(kind, spec.type)
    except PluginError as exc:
        errors.add(f"{path}.type", str(exc))
        return None
    extra = {k: v for k, v in (spec.model_extra or {}).items()}
    try:
        return Built(cls, cls.Config(**extra), path, label)
    except ValidationError as exc:
        errors.add_validation(exc, path)
        return None


def load_config(file: str | os.PathLike, registry: Registry, *,
                env: dict[str, str] | None = None, text: str | None = None,
                require_env: bool = True) -> LoadedConfig:
    """Read and validate ``file``; raises ConfigError listing every problem found.

    ``require_env=False`` leaves an unset ``${VAR}`` as written: for commands that only
    read the ledger (``status``) and need no secret."""
    file = str(file)
    if text is None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read configuration: {exc.strerror}") from None
    data, lines = parse_yaml(text, file)
    errors = _Errors(file, lines)
    data = _interpolate(data, "", dict(os.environ) if env is None else env,
                        errors if require_env else None)
    errors.raise_if_any()
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        errors.add_validation(exc)
        errors.raise_if_any()
        raise
    source = _build(registry, "source", settings.source, "source", errors)
    transforms = [_build(registry, "transform", t, f"transforms[{i}]", errors)
                  for i, t in enumerate(settings.transforms)]
    sinks, sink_transforms = [], {}
    for i, s in enumerate(settings.sinks):
        spec = ComponentSpec(type=s.type, **(s.model_extra or {}))
        sinks.append(_build(registry, "sink", spec, f"sinks[{i}]", errors, label=s.name))
        sink_transforms[s.name] = [
            _build(registry, "transform", t, f"sinks[{i}].transforms[{j}]", errors)
            for j, t in enumerate(s.transforms)]
    errors.raise_if_any()
    # The raw component mappings may hold interpolated secrets; only the typed configs
    # (with SecretStr fields) are kept from here on.
    settings = settings.model_copy(update={
        "source": ComponentSpec(type=settings.source.type),
        "transforms": [ComponentSpec(type=t.type) for t in settings.transforms],
        "sinks": [SinkSpec(name=s.name, type=s.type,
                           transforms=[ComponentSpec(type=t.type) for t in s.transforms])
                  for s in settings.sinks]})
    return LoadedConfig(settings, source, transforms, sinks, sink_transforms, file)
