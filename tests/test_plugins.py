import types

import pytest

from archiver.components import ComponentConfig, Sink
from archiver.errors import PluginError
from archiver.hookspecs import hookimpl
from archiver.plugins import build_plugin_manager


def _plugin(name, **hooks):
    mod = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(mod, hook_name, hookimpl(fn))
    return mod


class OtherLocal(Sink):
    name = "local"
    Config = ComponentConfig


def test_builtins_registered_like_plugins():
    p = build_plugin_manager(entry_points=False)
    assert {"plangrep", "local", "checksum", "decompress"} <= set(p.infos)
    assert p.registry.owner("sink", "local") == "local"
    assert "sink:local" in p.infos["local"].components
    assert "archiver_register_sinks" in p.infos["local"].hooks


def test_duplicate_component_names_name_both_plugins():
    dup = _plugin("acme_local", archiver_register_sinks=lambda register: register(OtherLocal))
    with pytest.raises(PluginError) as exc:
        build_plugin_manager(entry_points=False, extra=[("acme", dup)])
    assert "'local'" in str(exc.value) and "'acme'" in str(exc.value)


def test_unknown_hook_is_refused():
    bad = _plugin("typo")
    bad.archiver_register_sink = hookimpl(lambda register: None)  # missing "s"
    with pytest.raises(PluginError) as exc:
        build_plugin_manager(entry_points=False, extra=[("typo", bad)])
    assert "unknown hook" in str(exc.value)


def test_disable_and_restrict_by_env(monkeypatch):
    monkeypatch.setenv("ARCHIVER_DISABLE_PLUGINS", "decompress")
    p = build_plugin_manager(entry_points=False)
    assert "decompress" not in p.infos and "transform:decompress" not in str(p.infos)
    monkeypatch.delenv("ARCHIVER_DISABLE_PLUGINS")
    monkeypatch.setenv("ARCHIVER_PLUGINS", "local,checksum")
    p = build_plugin_manager(entry_points=False)
    assert set(p.infos) == {"local", "checksum"}


def test_disabled_duplicate_resolves_conflict(monkeypatch):
    dup = _plugin("acme_local", archiver_register_sinks=lambda register: register(OtherLocal))
    monkeypatch.setenv("ARCHIVER_DISABLE_PLUGINS", "local")
    p = build_plugin_manager(entry_points=False, extra=[("acme", dup)])
    assert p.registry.get("sink", "local") is OtherLocal


def test_nameless_component_refused():
    class Nameless(Sink):
        name = ""
    bad = _plugin("x", archiver_register_sinks=lambda register: register(Nameless))
    with pytest.raises(PluginError, match="without a 'name'"):
        build_plugin_manager(entry_points=False, extra=[("x", bad)])


def test_entry_points_are_loaded():
    """The built-ins are found without entry points; installed plugins through them."""
    from importlib import metadata
    eps = {ep.name for ep in metadata.entry_points(group="archiver")}
    p = build_plugin_manager()
    assert eps <= set(p.infos)
