"""open_ledger: a state_dir or a Settings object, ledger.url schemes, create=False and
read_only=True."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import SecretStr

from archiver.errors import LedgerError, LedgerMissing
from archiver.ledger import (
    ARCHIVED,
    SCHEMES,
    ReadOnlyLedger,
    SQLiteLedger,
    open_ledger,
    register_scheme,
)
from archiver.model import Job


def settings(state_dir, url=None):
    return SimpleNamespace(state_dir=state_dir,
                           ledger=SimpleNamespace(url=None if url is None else SecretStr(url)))


def test_a_state_dir_or_settings_open_the_same_file(tmp_path):
    led = open_ledger(tmp_path)
    assert isinstance(led, SQLiteLedger) and led.location == str(tmp_path / "ledger.sqlite")
    led.record_job(Job("j", "p", "completed"), ARCHIVED)
    led.close()
    for target in (str(tmp_path), settings(tmp_path), SimpleNamespace(state_dir=tmp_path)):
        again = open_ledger(target)
        assert again.job_states() == {"j": ARCHIVED}
        again.close()


def test_sqlite_urls(tmp_path, monkeypatch):
    absolute = tmp_path / "elsewhere" / "my ledger.sqlite"
    led = open_ledger(settings(tmp_path / "state", f"sqlite:///{absolute}"))
    assert led.location == str(absolute) and absolute.exists()
    led.close()
    monkeypatch.chdir(tmp_path)
    led = open_ledger(settings("state", "sqlite:///rel/led%20ger.sqlite"))
    assert (tmp_path / "rel" / "led ger.sqlite").exists()
    led.close()
    assert not (tmp_path / "state").exists()


def test_postgresql_needs_its_plugin_and_unknown_schemes_are_named(tmp_path, monkeypatch):
    for scheme in ("postgresql", "postgres"):  # as if archiver-postgres were not installed
        monkeypatch.delitem(SCHEMES, scheme, raising=False)
    url = "postgresql://archiver:s3cret@db.example/archiver"
    with pytest.raises(LedgerError) as err:
        open_ledger(settings(tmp_path, url))
    assert str(err.value) == ("ledger.url: PostgreSQL needs the archiver-postgres plugin "
                              "(pip install archiver-postgres)")
    with pytest.raises(LedgerError, match="unknown scheme 'mysql'") as err:
        open_ledger(settings(tmp_path, "mysql://u:s3cret@h/db"))
    assert "s3cret" not in str(err.value)


def test_a_plugin_can_register_a_scheme(tmp_path, monkeypatch):
    seen = {}

    def opener(url, *, settings, create, read_only):
        seen.update(url=url, create=create, read_only=read_only)
        return open_ledger(tmp_path)

    monkeypatch.setitem(SCHEMES, "postgresql", None)
    register_scheme("postgresql", opener)
    led = open_ledger(settings(tmp_path, "postgresql://h/db"), create=False)
    assert seen == {"url": "postgresql://h/db", "create": False, "read_only": False}
    led.close()


def test_create_false_refuses_a_missing_ledger(tmp_path):
    with pytest.raises(LedgerMissing) as err:
        open_ledger(tmp_path / "typo", create=False)
    assert str(err.value) == (f"no ledger at {tmp_path / 'typo' / 'ledger.sqlite'}: wrong "
                              "directory or state_dir?")
    assert not (tmp_path / "typo").exists()
    with pytest.raises(LedgerMissing):
        open_ledger(tmp_path / "typo", create=False, read_only=True)


def test_read_only_creates_nothing_and_refuses_writes(tmp_path):
    empty = open_ledger(tmp_path / "none", read_only=True)
    assert isinstance(empty, ReadOnlyLedger)
    assert empty.job_states() == {} and empty.summary()["jobs"] == {}
    assert empty.count_events("x") == 0 and empty.copies("j") == {}
    assert empty.schema_info()["version"] == 0
    empty.close()
    assert not (tmp_path / "none").exists()
    led = open_ledger(tmp_path)
    led.record_job(Job("j", "p", "completed"), ARCHIVED)
    led.close()
    names = {p.name for p in tmp_path.iterdir()}
    ro = open_ledger(tmp_path, read_only=True)
    assert ro.job_states() == {"j": ARCHIVED}
    for write in ("record_job", "event", "claim", "batch", "finish_job", "add_pending"):
        with pytest.raises(RuntimeError, match=rf"dry run: ledger.{write}\(\) would write"):
            getattr(ro, write)()
    with pytest.raises(AttributeError):
        ro.no_such_method  # noqa: B018
    assert getattr(ro, "missing", "default") == "default"
    ro.close()
    assert {p.name for p in tmp_path.iterdir()} == names


def test_the_real_ledger_settings(tmp_path):
    config = pytest.importorskip("archiver.config")
    if not hasattr(config, "LedgerSettings"):
        pytest.skip("no ledger: section in this config")
    target = tmp_path / "x.sqlite"
    ns = SimpleNamespace(state_dir=tmp_path / "s",
                         ledger=config.LedgerSettings(url=f"sqlite:///{target}"))
    led = open_ledger(ns)
    assert led.location == str(target)
    led.close()


def test_a_file_that_is_not_a_ledger_is_named(tmp_path):
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"not an sqlite database, just some bytes " * 20)
    data = path.read_bytes()
    with pytest.raises(LedgerError, match=f"ledger at {path}: not an SQLite database"):
        open_ledger(tmp_path)
    with pytest.raises(LedgerError, match="cannot be read"):
        open_ledger(tmp_path, read_only=True)
    assert path.read_bytes() == data
