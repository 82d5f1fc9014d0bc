"""Issue "Many workers, one ledger": ``workers``, ``lease:``, ``ledger:``, ``chunk_size``."""

from __future__ import annotations

from pathlib import Path

import pytest

from archiver.config import LeaseSettings, LedgerSettings, load_config
from archiver.errors import ConfigError

BASE = ("source:\n  type: plangrep\n  api_key: ${KEY}\n"
        "sinks:\n  - name: primary\n    type: local\n    root: ./archive\n")


def load(plugins, extra: str = "", env=None):
    return load_config("f.yaml", plugins.registry, text=BASE + extra,
                       env={"KEY": "k", **(env or {})})


def error(plugins, extra: str, env=None) -> str:
    with pytest.raises(ConfigError) as exc:
        load(plugins, extra, env)
    return str(exc.value)


def test_defaults(plugins):
    s = load(plugins).settings
    assert s.workers == 1
    assert (s.lease.ttl, s.lease.heartbeat, s.lease.max_lost, s.lease.self_fence) == \
        (60, 20, 3, None)
    assert s.lease.effective_self_fence == 45
    assert s.ledger.url is None and s.ledger.outage_tolerance == 60
    assert s.ledger.scheme == "sqlite"
    assert s.ledger.sqlite_path(s.state_dir) == Path(".archiver/ledger.sqlite")


# --------------------------------------------------------------------------- workers

@pytest.mark.parametrize("value, expected", [("4", 4), ("64", 64), ("'8'", 8),
                                             ("${WORKERS}", 3)])
def test_workers(plugins, value, expected):
    assert load(plugins, f"workers: {value}\n", env={"WORKERS": "3"}).settings.workers == expected


@pytest.mark.parametrize("value, problem", [
    ("0", "greater than or equal to 1"), ("-2", "greater than or equal to 1"),
    ("65", "less than or equal to 64"), ("2.5", "must be a whole number, not 2.5"),
    ("2.0", "must be a whole number"), ("two", "must be a whole number, not 'two'"),
    ("true", "must be a whole number, not true"), ("[2]", "valid integer"),
    ("null", "valid integer"),
])
def test_bad_workers_name_the_path(plugins, value, problem):
    msg = error(plugins, f"workers: {value}\n")
    assert "f.yaml:8: workers: " in msg and problem in msg


# --------------------------------------------------------------------------- lease

def test_lease_values(plugins):
    lease = load(plugins, "lease: {ttl: 2m, heartbeat: 30s, max_lost: 5, self_fence: 90}\n"
                 ).settings.lease
    assert (lease.ttl, lease.heartbeat, lease.max_lost, lease.effective_self_fence) == \
        (120, 30, 5, 90)


def test_small_leases_for_tests(plugins):
    lease = load(plugins, "lease: {ttl: 0.9, heartbeat: 0.2}\n").settings.lease
    assert lease.effective_self_fence == pytest.approx(0.675)


@pytest.mark.parametrize("lease, where, problem", [
    ("{heartbeat: 60}", "lease.heartbeat", "must be shorter than lease.ttl (60s)"),
    ("{heartbeat: 2m}", "lease.heartbeat", "must be shorter than lease.ttl (60s)"),
    ("{ttl: 10}", "lease.heartbeat", "must be shorter than lease.ttl (10s); the default "
                                     "heartbeat is 20s"),
    ("{heartbeat: 0}", "lease.heartbeat", "greater than 0"),
    ("{ttl: 0.5}", "lease.ttl", "greater than 0.5"),
    ("{ttl: soon}", "lease.ttl", "not a duration"),
    ("{ttl: .inf}", "lease.ttl", "finite"),
    ("{self_fence: 60}", "lease.self_fence", "must be shorter than lease.ttl (60s)"),
    ("{self_fence: 10}", "lease.self_fence", "must be longer than lease.heartbeat (20s)"),
    ("{ttl: 10, heartbeat: 9}", "lease.self_fence",
     "the default 0.75 x lease.ttl (7.5s) must be longer than lease.heartbeat (9s)"),
    ("{max_lost: 0}", "lease.max_lost", "greater than or equal to 1"),
    ("{max_lost: 1.5}", "lease.max_lost", "whole number"),
    ("{tll: 5}", "lease.tll", "unknown key (did you mean 'ttl'?)"),
])
def test_bad_lease_names_the_path(plugins, lease, where, problem):
    msg = error(plugins, f"lease: {lease}\n")
    assert f"f.yaml:8: {where}: " in msg and problem in msg


# --------------------------------------------------------------------------- ledger

@pytest.mark.parametrize("url, scheme, path", [
    ("sqlite:///state/ledger.db", "sqlite", Path("state/ledger.db")),
    ("sqlite:////var/lib/archiver/l.sqlite", "sqlite", Path("/var/lib/archiver/l.sqlite")),
    ("sqlite:///~/l.sqlite", "sqlite", Path("~/l.sqlite").expanduser()),
    ("postgresql://archiver:pw@db.internal:5432/archiver", "postgresql", None),
    ("postgres://db/archiver", "postgresql", None),
    ("postgresql:///archiver?host=/run/postgresql", "postgresql", None),
])
def test_ledger_urls(plugins, url, scheme, path):
    ledger = load(plugins, f"ledger: {{url: '{url}'}}\n").settings.ledger
    assert ledger.scheme == scheme and ledger.sqlite_path("st") == path
    assert "pw" not in repr(ledger)


def test_ledger_url_from_the_environment(plugins):
    secret = "postgresql://archiver:hunter2@db/archiver"
    cfg = load(plugins, "ledger:\n  url: ${LEDGER_URL}\n  outage_tolerance: 5m\n",
               env={"LEDGER_URL": secret})
    assert cfg.settings.ledger.url.get_secret_value() == secret
    assert cfg.settings.ledger.outage_tolerance == 300
    assert "hunter2" not in repr(cfg) and cfg.warnings == []


@pytest.mark.parametrize("url", [
    "mysql://root:hunter2@db/x", "hunter2", "postgresql://u:hunter2@db:port/x",
    "postgresql://u:hunter2@[::1/x", "sqlite://hunter2/x", "sqlite:///:memory:", "sqlite://",
    "sqlite:///x?hunter2=1", "  ",
])
def test_bad_ledger_url_is_named_but_never_echoed(plugins, url):
    msg = error(plugins, f"ledger: {{url: '{url}'}}\n")
    assert "f.yaml:8: ledger.url: " in msg
    assert "hunter2" not in msg  # every URL above that could carry a secret has this one


def test_a_ledger_url_is_needed_even_by_read_only_commands(plugins):
    with pytest.raises(ConfigError, match="ledger.url: environment variable LEDGER_URL is not"):
        load_config("f.yaml", plugins.registry, text=BASE + "ledger: {url: '${LEDGER_URL}'}\n",
                    env={}, require_env=False)
    cfg = load_config("f.yaml", plugins.registry, text=BASE, env={}, require_env=False)
    assert cfg.source.config.api_key.get_secret_value() == "${KEY}"


def test_models_can_be_built_directly():
    assert LeaseSettings(ttl=3, heartbeat=1).effective_self_fence == 2.25
    assert LedgerSettings(url="sqlite:///x.db").sqlite_path("ignored") == Path("x.db")
    with pytest.raises(ValueError):
        LeaseSettings(ttl=3)  # the default heartbeat (20 s) is longer


# --------------------------------------------------------------------------- chunk_size

def test_chunk_size(plugins):
    assert load(plugins, "chunk_size: 256KiB\n").settings.chunk_size == 256 << 10
    assert "chunk_size: must be at least 4 KiB" in error(plugins, "chunk_size: 1KiB\n")
