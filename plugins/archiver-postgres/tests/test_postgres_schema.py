"""Schema versions of the PostgreSQL ledger: explicit migration, refusals, checksums."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import psycopg
import pytest
from archiver_postgres import PostgresLedger, PostgresReadOnlyLedger, schema
from pydantic import SecretStr

from archiver.errors import LedgerMissing, LedgerSchemaError
from archiver.ledger import open_ledger
from archiver.ledger.facts import expires_ts
from archiver.plugins import build_plugin_manager
from archiver.testing.ledger_contract import job

HINT = "run `archiver ledger migrate -c FILE`"


@pytest.fixture(autouse=True)
def plugins_registered():
    build_plugin_manager()


def settings(url: str) -> SimpleNamespace:
    return SimpleNamespace(state_dir=".", ledger=SimpleNamespace(url=SecretStr(url)))


def migrate(url: str, upto: int | None = None) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [m.name for m in schema.migrate(conn, "test", upto=upto)]


def test_the_migrations_are_numbered_and_checksummed():
    names = [m.name for m in schema.known()]
    assert names == ["0001_initial", "0002_claims", "0003_budgets"] and schema.latest() == 3
    assert all(len(m.sha256) == 64 for m in schema.known())


def test_an_empty_database_is_created_only_by_migrate(pg_url):
    with pytest.raises(LedgerSchemaError, match="has no schema yet") as err:
        open_ledger(settings(pg_url))  # a worker does not create it
    assert HINT in str(err.value)
    with pytest.raises(LedgerMissing, match="no ledger at") as err:
        open_ledger(settings(pg_url), create=False)  # status, verify
    assert HINT in str(err.value)
    ro = open_ledger(settings(pg_url), read_only=True, create=False)  # ledger status
    assert isinstance(ro, PostgresReadOnlyLedger)
    info = ro.schema_info()
    assert (info["version"], info["pending"]) == (0, ["0001_initial", "0002_claims", "0003_budgets"])
    assert ro.job_states() == {} and ro.workers() == [] and ro.summary()["jobs"] == {}
    with pytest.raises(RuntimeError, match=r"dry run: ledger.record_job\(\) would write"):
        ro.record_job(job(1), "archived")
    ro.close()
    led = open_ledger(settings(pg_url), create=False, migrate=True)  # ledger migrate
    assert [m.name for m in led.migrated] == ["0001_initial", "0002_claims", "0003_budgets"]
    led.record_job(job(1), "archived")
    led.close()
    again = open_ledger(settings(pg_url), migrate=True)
    assert again.migrated == [] and again.job_states() == {"job_1": "archived"}
    again.close()


def test_an_older_schema_is_refused_until_migrated(pg_url):
    assert migrate(pg_url, upto=1) == ["0001_initial"]
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a job of version 1
        conn.execute("INSERT INTO jobs (job_id, project_id, status, state, expires_at,"
                     " first_seen, updated) VALUES ('j', 'p', 'completed', 'incomplete',"
                     " '2031-01-01T10:00:00Z', 1, 1), ('k', 'p', 'completed', 'incomplete',"
                     " '2031-01-01T10:00:00', 1, 1), ('l', 'p', 'completed', 'incomplete',"
                     " 'not a date', 1, 1)")
    with pytest.raises(LedgerSchemaError) as err:
        PostgresLedger(pg_url)
    assert str(err.value).endswith("has schema version 1; this archiver needs 3 "
                                   f"(0002_claims, 0003_budgets pending): {HINT}")
    ro = PostgresReadOnlyLedger(pg_url)  # read as it is: no lease columns, no workers
    assert [r.job_id for r in ro.job_rows()] == ["j", "k", "l"] and ro.workers() == []
    ro.close()
    assert migrate(pg_url) == ["0002_claims", "0003_budgets"]
    led = PostgresLedger(pg_url)
    got = dict(led._exec("SELECT job_id, expires_ts FROM jobs"))
    assert got == {"j": expires_ts("2031-01-01T10:00:00Z"),
                   "k": expires_ts("2031-01-01T10:00:00"), "l": None}
    led.close()


def test_a_newer_or_edited_schema_is_refused(ledger_url):
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (4, '0004_future', %s, 0)",
                     ("f" * 64,))
    for opener in (PostgresLedger, PostgresReadOnlyLedger):
        with pytest.raises(LedgerSchemaError, match="has schema version 4; this "
                                                    "archiver-postgres knows up to 3"):
            opener(ledger_url)
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = 4")
        conn.execute("UPDATE schema_migrations SET sha256 = %s WHERE version = 1", ("0" * 64,))
    with pytest.raises(LedgerSchemaError, match="0001_initial was applied with sha256 0000"):
        PostgresLedger(ledger_url)


def test_another_applications_tables_are_refused(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE jobs (id int)")
    with pytest.raises(LedgerSchemaError, match="not an archiver ledger"):
        PostgresLedger(pg_url, migrate=True)


def test_two_migrations_at_once_apply_each_file_once(pg_url):
    results, start = [], threading.Barrier(2)

    def run():
        start.wait()
        results.append(migrate(pg_url))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [[], ["0001_initial", "0002_claims", "0003_budgets"]]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 3


def test_the_search_path_must_name_a_schema(pg_admin):
    from pg_testing import with_options
    with pytest.raises(LedgerSchemaError, match="CREATE SCHEMA it first"):
        PostgresLedger(with_options(pg_admin, "archiver_no_such_schema"), migrate=True)
