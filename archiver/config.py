"""YAML configuration: parse, interpolate ``${VAR}``, validate into typed models.

Every error names the YAML path at fault (``sinks[1].root``) and, where the YAML parser
knows it, the line. Validation performs no network or disk I/O (beyond reading the file):
component configs are checked against the ``Config`` model of the registered component
class only, and the core imports no plugin.

Relative paths (``state_dir``, a local sink's ``root``) are relative to the working
directory the command runs in, as with the AWS CLI and rclone. A leading ``~`` or
``~user`` is expanded in every field typed ``Path`` (ours and the components').

The models live in :mod:`archiver.config_settings`, the YAML layer (limits, line numbers,
``${VAR}``, messages) in :mod:`archiver.config_yaml`; both are re-exported here.
"""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr, ValidationError

from .components import ComponentConfig
from .config_settings import (
    BAG_INFO_RESERVED,
    BagitSettings,
    ComponentSpec,
    LeaseSettings,
    LedgerSettings,
    Seconds,
    ServeSettings,
    Settings,
    SinkSpec,
    WatchSettings,
    WebhookSecrets,
)
from .config_yaml import Errors, Interpolation, parse_yaml, read_text
from .dispatch import LOCAL
from .errors import PluginError
from .registry import Registry

__all__ = ["BAG_INFO_RESERVED", "BagitSettings", "Built", "ComponentSpec", "LeaseSettings",
           "LedgerSettings", "LoadedConfig", "Seconds", "ServeSettings", "Settings", "SinkSpec",
           "WatchSettings", "WebhookSecrets", "load_config", "parse_yaml"]


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
    #: ``file:line: path: problem`` lines worth showing but not fatal (literal secrets).
    warnings: list[str] = field(default_factory=list)
    #: The ``dispatch.mode`` dispatcher (None: ``local``).
    dispatcher: Built | None = None
    #: Plugin-owned top-level sections present in the file (``archiver_register_sections``):
    #: name -> ``cls(config)``, built once the whole file is valid.
    sections: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- ~ in paths

def _is_path(a: Any) -> bool:
    return isinstance(a, type) and issubclass(a, PurePath)


def _path_kind(ann: Any) -> str | None:
    """``"one"`` for ``Path`` / ``Path | None``, ``"list"`` for ``list[Path]``, else None."""
    if _is_path(ann):
        return "one"
    args = typing.get_args(ann)
    if typing.get_origin(ann) in (list, tuple) and args and _is_path(args[0]):
        return "list"
    if any(_is_path(a) for a in args) and all(_is_path(a) or a is type(None) for a in args):
        return "one"
    return None


def _expand_one(value: Any, path: str, errors: Errors) -> Any:
    if not (isinstance(value, str) and value.startswith("~")):
        return value
    expanded = os.path.expanduser(value)
    if expanded.startswith("~"):
        user = value[1:].split("/", 1)[0]
        who = f"no user {user!r}" if user else "no home directory (HOME)"
        errors.add(path, f"cannot expand {value.split('/', 1)[0]}: {who}")
    return expanded


def _models_in(ann: Any) -> type[BaseModel] | None:
    for a in (ann, *typing.get_args(ann)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _expand_home(model: type[BaseModel], data: Any, path: str, errors: Errors) -> Any:
    """``data`` with ``~`` expanded in the values of ``model``'s Path fields (recursively).

    Done on the YAML values, before validation, so that the model's own validators see
    the real path; driven by annotations, so it works for every plugin without knowing it."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for key, value in data.items():
        info = model.model_fields.get(key) if isinstance(key, str) else None
        if info is None:
            continue
        sub = f"{path}.{key}" if path else key
        ann = info.annotation
        kind = _path_kind(ann)
        if kind == "one":
            out[key] = _expand_one(value, sub, errors)
        elif kind == "list" and isinstance(value, list):
            out[key] = [_expand_one(v, f"{sub}[{i}]", errors) for i, v in enumerate(value)]
        elif (nested := _models_in(ann)) is not None:
            if isinstance(value, list):
                out[key] = [_expand_home(nested, v, f"{sub}[{i}]", errors)
                            for i, v in enumerate(value)]
            else:
                out[key] = _expand_home(nested, value, sub, errors)
    return out


# --------------------------------------------------------------------------- checks

def _env_name(*parts: str) -> str:
    return "_".join(p for p in parts if p).upper().replace("-", "_").replace(".", "_")


_SETTINGS_SECRETS = {"serve.secrets.default": "PLANGREP_WEBHOOK_SECRET",
                     "ledger.url": "ARCHIVER_LEDGER_URL"}


def _literal_secrets(value: Any, path: str, var: str, used: set[str], errors: Errors,
                     out: list[str]) -> None:
    """Warn for each SecretStr written into the file itself rather than as ``${VAR}``."""
    if isinstance(value, SecretStr):
        if path in errors.lines and path not in used:
            out.append(f"{errors.where(path)}{path}: a literal secret in the config file; "
                       f"use ${{{var}}}")
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _literal_secrets(getattr(value, name), f"{path}.{name}",
                             _SETTINGS_SECRETS.get(f"{path}.{name}") or f"{var}_{name.upper()}",
                             used, errors, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _literal_secrets(v, f"{path}[{i}]", var, used, errors, out)


def _shared_stores(sinks: list[Built], errors: Errors) -> None:
    """Two sinks writing into one directory or bucket prefix would overwrite each other's
    objects and confuse each other's cleanup: name both."""
    first: dict[tuple, str] = {}
    for built in sinks:
        cfg = built.config
        root, bucket = getattr(cfg, "root", None), getattr(cfg, "bucket", None)
        if isinstance(root, (str, os.PathLike)):
            where = os.path.normpath(os.path.abspath(os.fspath(root)))
            key: tuple = ("root", where)
            what, at = f"directory ({where})", f"{built.path}.root"
        elif isinstance(bucket, str):
            prefix = str(getattr(cfg, "prefix", "") or "").strip("/")
            # s3 and gcs buckets (or two S3 endpoints) are different stores.
            key = ("bucket", built.cls.name, getattr(cfg, "endpoint_url", None), bucket, prefix)
            what, at = f"bucket and prefix ({bucket}/{prefix})", f"{built.path}.bucket"
        else:
            continue
        if key in first:
            errors.add(at, f"the same {what} as {first[key]}: two sinks must not share one")
        else:
            first[key] = at


def _build(reg: Registry, kind: str, spec: ComponentSpec, path: str, errors: Errors,
           label: str = "", own_keys: tuple[str, ...] = ("type",)) -> Built | None:
    try:
        cls = reg.get(kind, spec.type)
    except PluginError as exc:
        errors.add(f"{path}.type", str(exc))
        return None
    model = getattr(cls, "Config", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        errors.add(f"{path}.type", f"the {kind} plugin {spec.type!r} has no pydantic Config")
        return None
    extra = _expand_home(model, dict(spec.model_extra or {}), path, errors)
    try:
        return Built(cls, model.model_validate(extra), path, label)
    except ValidationError as exc:
        errors.add_validation(exc, path, model, extra_keys=own_keys)
    except Exception as exc:  # noqa: BLE001 - a plugin's validator bug is still a config error
        errors.add(path, f"the {kind} plugin {spec.type!r} failed to validate these options: "
                         f"{type(exc).__name__}")
    return None


def load_config(file: str | os.PathLike, registry: Registry, *,
                env: dict[str, str] | None = None, text: str | None = None,
                require_env: bool = True) -> LoadedConfig:
    """Read and validate ``file``; raises ConfigError listing every problem found.

    ``require_env=False`` leaves an unset ``${VAR}`` as written: for commands that only
    read the ledger (``status``) and need no secret. ``state_dir`` and ``ledger`` still
    need theirs: without them such a command would read another ledger."""
    file = str(file)
    if text is None:
        text = read_text(file)
    data, lines = parse_yaml(text, file)
    # `x-` keys are a place for YAML anchors (as in docker compose), not settings.
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    errors = Errors(file, lines)
    interpolate = Interpolation(dict(os.environ) if env is None else env, errors, require_env)
    data = _expand_home(Settings, interpolate(data), "", errors)
    errors.raise_if_any()
    # A dispatcher's options are the top-level section named after it (`celery:`).
    sections = {k: data.pop(k) for k in list(data) if k in registry.classes["dispatcher"]}
    owned = _owned_sections(registry, data, errors)
    try:
        settings: Settings | None = Settings.model_validate(data)
    except ValidationError as exc:
        errors.add_validation(exc, model=Settings)
        settings = None
    # Components are validated even when a top-level key is wrong, to report every problem.
    source_spec, transform_specs, sink_specs = _specs(settings, data)
    source = _build(registry, "source", source_spec, "source", errors) if source_spec else None
    transforms = [_build(registry, "transform", t, f"transforms[{i}]", errors)
                  for i, t in transform_specs]
    sinks, sink_transforms = [], {}
    for i, s in sink_specs:
        spec = ComponentSpec.model_validate({**(s.model_extra or {}), "type": s.type})
        sinks.append(_build(registry, "sink", spec, f"sinks[{i}]", errors, label=s.name,
                            own_keys=("type", "name", "transforms")))
        sink_transforms[s.name] = [
            _build(registry, "transform", t, f"sinks[{i}].transforms[{j}]", errors)
            for j, t in enumerate(s.transforms)]
    _shared_stores([b for b in sinks if b is not None], errors)
    dispatcher = _dispatcher(registry, settings, sections, errors)
    owned_built = {name: _build(registry, "section", _section_spec(name, section, errors,
                                                                   "section"), name, errors)
                   for name, section in owned.items()}
    errors.raise_if_any()
    assert settings is not None and source is not None  # else errors were raised
    warnings: list[str] = []
    extras = [dispatcher] if dispatcher is not None else []
    extras += [b for b in owned_built.values() if b is not None]
    for built in [source, *transforms, *sinks, *(t for ts in sink_transforms.values()
                                                 for t in ts), *extras]:
        _literal_secrets(built.config, built.path, _env_name(built.cls.name), interpolate.used,
                         errors, warnings)
    _literal_secrets(settings.serve, "serve", "", interpolate.used, errors, warnings)
    url = settings.ledger.url
    if url is not None and _has_password(url):
        _literal_secrets(url, "ledger.url", "ARCHIVER_LEDGER_URL", interpolate.used, errors,
                         warnings)
    # The raw component mappings may hold interpolated secrets; only the typed configs
    # (with SecretStr fields) are kept from here on.
    settings = settings.model_copy(update={
        "source": ComponentSpec(type=settings.source.type),
        "transforms": [ComponentSpec(type=t.type) for t in settings.transforms],
        "sinks": [SinkSpec(name=s.name, type=s.type,
                           transforms=[ComponentSpec(type=t.type) for t in s.transforms])
                  for s in settings.sinks]})
    return LoadedConfig(settings, source, transforms, sinks, sink_transforms, file, warnings,
                        dispatcher, _construct(owned_built, errors))


def _owned_sections(registry: Registry, data: dict, errors: Errors) -> dict[str, Any]:
    """Pop the plugin-owned sections out of ``data``; a section named like a core setting
    or a dispatcher would make one key mean two things: an error naming its plugin."""
    owned = {}
    for name in registry.classes["section"]:
        if name in Settings.model_fields or name in registry.classes["dispatcher"]:
            errors.add(name, f"plugin {registry.owner('section', name)!r} registers a section "
                             "named like a core setting or a dispatcher: disable it "
                             "(ARCHIVER_DISABLE_PLUGINS)")
        elif name in data:
            owned[name] = data.pop(name)
    return owned


def _construct(built: dict[str, Built | None], errors: Errors) -> dict[str, Any]:
    out = {}
    for name, b in built.items():
        assert b is not None  # else errors were raised
        try:
            out[name] = b.cls(b.config)
        except Exception as exc:  # noqa: BLE001 - a plugin's bug is still reported by path
            errors.add(name, f"the {name} plugin section failed to start: "
                             f"{type(exc).__name__}")
    errors.raise_if_any()
    return out


def _dispatcher(registry: Registry, settings: Settings | None, sections: dict[str, Any],
                errors: Errors) -> Built | None:
    """The ``dispatch.mode`` dispatcher with its section's options (every dispatcher
    section present is checked, used or not)."""
    built = {name: _build(registry, "dispatcher",
                          _section_spec(name, section, errors), name, errors)
             for name, section in sections.items()}
    if settings is None or settings.dispatch.mode == LOCAL:
        return None
    mode = settings.dispatch.mode
    if mode not in registry.classes["dispatcher"]:
        try:
            registry.get("dispatcher", mode)
        except PluginError as exc:
            errors.add("dispatch.mode", str(exc).replace("dispatcher type", "dispatch mode"))
        return None
    if mode not in built:
        built[mode] = _build(registry, "dispatcher", ComponentSpec(type=mode), mode, errors)
    cls = registry.get("dispatcher", mode)
    schemes = tuple(getattr(cls, "ledger_schemes", ()) or ())
    if schemes and settings.ledger.scheme not in schemes:
        errors.add("dispatch.mode", f"mode {mode!r} needs a ledger that every worker host "
                   f"reaches ({' or '.join(schemes)}), not {settings.ledger.scheme}: set "
                   "ledger.url (e.g. postgresql://archiver@db.example/archiver)")
    if settings.workers > 1:
        errors.add("workers", f"local worker processes do not run beside dispatch.mode "
                   f"{mode!r} (its workers archive the jobs): drop workers: or set "
                   "dispatch.mode: local")
    return built.get(mode)


def _section_spec(name: str, section: Any, errors: Errors,
                  kind: str = "dispatcher") -> ComponentSpec:
    if section is None:
        section = {}
    if not isinstance(section, dict):
        errors.add(name, f"must be a mapping of the {name} {kind}'s options")
        section = {}
    if "type" in section:
        errors.add(f"{name}.type", "is not an option here: the section name is the type")
        section = {k: v for k, v in section.items() if k != "type"}
    return ComponentSpec.model_validate({**section, "type": name})


def _specs(settings: Settings | None, data: dict) -> tuple[ComponentSpec | None, list, list]:
    """The component specs, from ``settings`` or, when it failed, from whichever parts of
    ``data`` are well-formed on their own (their problems are already reported)."""
    if settings is not None:
        return (settings.source, list(enumerate(settings.transforms)),
                list(enumerate(settings.sinks)))

    def each(model: type[BaseModel], items: Any) -> list:
        out = []
        for i, item in enumerate(items if isinstance(items, list) else []):
            # A sink whose name is wrong still has options worth checking.
            for attempt in (item, {**item, "name": f"sink-{i}"} if isinstance(item, dict)
                            and model is SinkSpec else None):
                try:
                    out.append((i, model.model_validate(attempt)))
                    break
                except ValidationError:
                    pass
        return out

    try:
        source = ComponentSpec.model_validate(data.get("source"))
    except ValidationError:
        source = None
    return source, each(ComponentSpec, data.get("transforms")), each(SinkSpec, data.get("sinks"))


def _has_password(url: SecretStr) -> bool:
    try:
        return bool(urlsplit(url.get_secret_value()).password)
    except ValueError:
        return False
