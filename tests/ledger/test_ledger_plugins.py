"""The ``archiver_register_ledgers`` hook: plugins add ledger URL schemes to open_ledger."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import SecretStr

from archiver.errors import LedgerError, PluginError
from archiver.hookspecs import hookimpl
from archiver.ledger import SCHEMES, SQLiteLedger, factory, open_ledger
from archiver.plugins import build_plugin_manager


@pytest.fixture(autouse=True)
def schemes_restored():
    """Each test's plugin managers leave SCHEMES as they found it."""
    saved, plugin = dict(SCHEMES), dict(factory.PLUGIN_SCHEMES)
    yield
    SCHEMES.clear()
    SCHEMES.update(saved)
    factory.PLUGIN_SCHEMES.clear()
    factory.PLUGIN_SCHEMES.update(plugin)


def settings(state_dir, url):
    return SimpleNamespace(state_dir=state_dir, ledger=SimpleNamespace(url=SecretStr(url)))


class MemLedgers:
    """A plugin whose ``memdb://`` ledger is an SQLite file in the state_dir."""

    def __init__(self, *schemes: str):
        self.schemes = schemes or ("memdb",)
        self.calls: list[dict] = []

    @hookimpl
    def archiver_register_ledgers(self, register):
        for scheme in self.schemes:
            register(scheme, self.open)

    def open(self, url, *, settings, create, read_only, **kw):
        self.calls.append({"url": url, "create": create, "read_only": read_only, **kw})
        return open_ledger(settings.state_dir, create=create, read_only=read_only)


def test_a_plugin_registers_a_scheme_and_open_ledger_uses_it(tmp_path):
    plugin = MemLedgers("memdb", "MemDB2")
    plugins = build_plugin_manager(entry_points=False, extra=[("mem", plugin)])
    assert SCHEMES["memdb"] == plugin.open and SCHEMES["memdb2"] == plugin.open
    assert factory.PLUGIN_SCHEMES == {"memdb": "mem", "memdb2": "mem"}
    assert plugins.infos["mem"].components == ["ledger:memdb", "ledger:memdb2"]
    assert "archiver_register_ledgers" in plugins.infos["mem"].hooks
    led = open_ledger(settings(tmp_path, "memdb://h/db"))
    assert isinstance(led, SQLiteLedger)
    led.close()
    open_ledger(settings(tmp_path, "MEMDB://h/db"), create=False, migrate=True).close()
    open_ledger(settings(tmp_path, "memdb://h/db"), read_only=True, migrate=True).close()
    assert plugin.calls == [
        {"url": "memdb://h/db", "create": True, "read_only": False},
        {"url": "MEMDB://h/db", "create": False, "read_only": False, "migrate": True},
        {"url": "memdb://h/db", "create": True, "read_only": True},  # read-only never migrates
    ]


def test_the_next_plugin_manager_decides_which_plugin_schemes_are_known(tmp_path):
    build_plugin_manager(entry_points=False, extra=[("mem", MemLedgers())])
    assert "memdb" in SCHEMES
    build_plugin_manager(entry_points=False)  # the plugin is gone (disabled, uninstalled)
    assert "memdb" not in SCHEMES and "sqlite" in SCHEMES
    with pytest.raises(LedgerError, match="unknown scheme 'memdb'"):
        open_ledger(settings(tmp_path, "memdb://h/db"))


def test_a_scheme_registered_twice_or_sqlite_is_an_error():
    with pytest.raises(PluginError, match="'memdb' is registered by two plugins: one and two"):
        build_plugin_manager(entry_points=False, extra=[("one", MemLedgers()),
                                                        ("two", MemLedgers())])
    with pytest.raises(PluginError, match=r"'sqlite' is registered by two plugins: "
                                          r"archiver \(built-in\) and mine"):
        build_plugin_manager(entry_points=False, extra=[("mine", MemLedgers("sqlite"))])
