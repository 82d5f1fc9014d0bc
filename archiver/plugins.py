"""Build the plugin manager: built-ins and installed plugins, loaded the same way.

Environment variables:

* ``ARCHIVER_PLUGINS``: comma-separated plugin names; when set, only these load
  (built-ins included, so list them too if you need them).
* ``ARCHIVER_DISABLE_PLUGINS``: comma-separated plugin names that never load.
* ``ARCHIVER_LOAD_ENTRY_POINTS=0``: load only the built-ins (handy for tests).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata

import pluggy

from . import __version__, hookspecs
from .errors import PluginError
from .registry import KINDS, Registry

ENTRY_POINT_GROUP = "archiver"

# (plugin name, module): registered through the same function as entry points.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("plangrep", "archiver.default_plugins.plangrep"),
    ("local", "archiver.default_plugins.local"),
    ("checksum", "archiver.default_plugins.checksum"),
    ("decompress", "archiver.default_plugins.decompress"),
    ("service", "archiver.default_plugins.service"),
    ("compliance", "archiver.default_plugins.compliance"),
    ("ledger", "archiver.default_plugins.ledger_command"),
)


@dataclass
class PluginInfo:
    name: str
    version: str
    module: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=list)


@dataclass
class Plugins:
    """A plugin manager with its component registry."""

    pm: pluggy.PluginManager
    registry: Registry
    infos: dict[str, PluginInfo]

    @property
    def hook(self):
        return self.pm.hook


def _names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def _register_ledgers(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
    """Ledger schemes from ``archiver_register_ledgers``: they replace those of the
    plugin manager built before (:func:`archiver.ledger.factory.use_plugin_schemes`)."""
    from .ledger import factory
    openers: dict[str, tuple[object, str]] = {}
    for impl in pm.hook.archiver_register_ledgers.get_hookimpls():
        def register(scheme: str, opener, plugin: str = impl.plugin_name) -> None:
            key = scheme.lower()
            if key == "sqlite" or key in openers:
                first = "archiver (built-in)" if key == "sqlite" else openers[key][1]
                raise PluginError(f"ledger scheme {key!r} is registered by two plugins: "
                                  f"{first} and {plugin}")
            openers[key] = (opener, plugin)
        impl.function(register=register)
        infos[impl.plugin_name].components += [
            f"ledger:{k}" for k, (_, owner) in openers.items() if owner == impl.plugin_name]
    factory.use_plugin_schemes(openers)


def build_plugin_manager(*, extra: list[tuple[str, object]] = (),
                         entry_points: bool | None = None) -> Plugins:
    """A fresh manager: built-ins, then entry points of group ``archiver``, then ``extra``
    (``(name, module_or_object)`` pairs, used by tests). Fails on unknown hooks
    (``check_pending``) and on duplicate component names."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    only, disabled = _names("ARCHIVER_PLUGINS"), _names("ARCHIVER_DISABLE_PLUGINS") or set()
    if entry_points is None:
        entry_points = os.environ.get("ARCHIVER_LOAD_ENTRY_POINTS", "1") != "0"
    infos: dict[str, PluginInfo] = {}

    def add(name: str, load, version: str, module: str, builtin: bool) -> None:
        if name in disabled or (only is not None and name not in only):
            return
        if name in infos:
            raise PluginError(f"two plugins are named {name!r}: {infos[name].module} and {module}")
        try:
            obj = load()
        except ImportError as exc:
            raise PluginError(f"plugin {name!r} ({module}) failed to import: {exc}") from exc
        pm.register(obj, name=name)
        infos[name] = PluginInfo(name, version, module, builtin)

    for name, module in DEFAULT_PLUGINS:
        add(name, partial(importlib.import_module, module), __version__, module, True)
    if entry_points:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            version = ep.dist.version if ep.dist else "?"
            add(ep.name, ep.load, version, ep.value, False)
    for name, obj in extra:
        add(name, lambda obj=obj: obj, "test", getattr(obj, "__name__", repr(obj)), False)

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from exc

    registry = Registry()
    for kind in KINDS:
        caller = getattr(pm.hook, f"archiver_register_{kind}s")
        for impl in caller.get_hookimpls():
            register = partial(registry.register, kind, plugin=impl.plugin_name)
            impl.function(register=register)
            infos[impl.plugin_name].components += [
                f"{kind}:{n}" for (k, n), owner in registry.owners.items()
                if k == kind and owner == impl.plugin_name]
    _register_ledgers(pm, infos)
    for name, info in infos.items():
        plugin = pm.get_plugin(name)
        info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    return Plugins(pm, registry, infos)
