"""Schema versions: a ledger made by the code before schema versions upgrades without
losing a record, its audit chain still verifies and keeps verifying; a newer schema or an
edited migration is refused, and the file is left as it was."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from archiver.compliance.audit import verify_chain
from archiver.errors import LedgerSchemaError
from archiver.ledger import ARCHIVED, INCOMPLETE, QUEUED, ReadOnlyLedger, open_ledger
from archiver.ledger import migrations as mig
from archiver.ledger.facts import expires_ts
from archiver.model import Job

FIXTURE = Path(__file__).parent / "fixtures" / "ledger-v1.sqlite"
V1_TABLES = {  # table -> columns of schema 1, in their order
    "jobs": "job_id, project_id, status, state, expires_at, error, raw, first_seen, updated,"
            " archived_at",
    "artifacts": "job_id, path, kind, key, filename, size, received, state, error, updated",
    "copies": "job_id, path, sink, key, location, size, received, stored, provider_checksum,"
              " chain, extra, existed, verified, stored_at",
    "pending": "id, sink, token, job_id, path, started",
    "events": "id, ts, kind, job_id, path, sink, message",
    "audit": "seq, job_id, line, hash",
    "bags": "job_id, sink, name, key, size, digests, stored_at",
    "fixity": "job_id, path, sink, checked_at, ok, detail",
}


def dump(path: Path) -> dict[str, list[tuple]]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {t: con.execute(f"SELECT {cols} FROM {t} ORDER BY 1, 2, 3").fetchall()
                for t, cols in V1_TABLES.items()}
    finally:
        con.close()


@pytest.fixture
def v1(tmp_path) -> Path:
    path = tmp_path / "ledger.sqlite"
    shutil.copyfile(FIXTURE, path)
    return path


def files_beside(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()}


def test_the_fixture_is_a_version_1_ledger():
    con = sqlite3.connect(f"file:{FIXTURE}?immutable=1", uri=True)
    state = mig.inspect_sqlite(con)
    con.close()
    assert (state.version, state.legacy) == (1, True)
    counts = {t: len(rows) for t, rows in dump(FIXTURE).items()}
    assert counts == {"jobs": 8, "artifacts": 13, "copies": 13, "pending": 2, "events": 40,
                      "audit": 74, "bags": 15, "fixity": 12}


def test_a_version_1_ledger_upgrades_and_keeps_every_record(v1):
    before = dump(v1)
    ledger = open_ledger(v1.parent)
    info = ledger.schema_info()
    assert info["version"] == info["known_version"] == mig.latest("sqlite")
    assert [m["name"] for m in info["migrations"]] == [m.name for m in mig.known("sqlite")]
    assert [m.name for m in ledger.migrated] == [m.name for m in mig.known("sqlite")[1:]]
    assert dump(v1) == before  # same rows, byte for byte
    brk, n = verify_chain(ledger.audit_rows())
    assert brk is None and n == 74
    # new columns: defaults, and expires_ts filled in from expiresAt
    for row in ledger.job_rows():
        assert (row.owner, row.lease_until, row.attempts, row.lost_leases, row.parked) == \
            (None, None, 0, 0, False)
    con = sqlite3.connect(v1)
    for expires_at, ts in con.execute("SELECT expires_at, expires_ts FROM jobs"):
        want = expires_ts(expires_at)
        assert (ts is None) == (want is None) and (want is None or abs(ts - want) < 0.01)
    con.close()
    pending = ledger.list_pending()
    assert [p.owner for p in pending] == [None, None]
    assert [(p.id, p.sink, p.token, p.started) for p in pending] == [
        r[:3] + (r[5],) for r in before["pending"]]
    # old copies read as typed rows
    (copy,) = [c for c in ledger.copy_rows(job_id="job_i1")]
    assert copy.location == "/x/job.json" and copy.project_id == "proj_f"
    assert {b.name for b in ledger.bag_files("job_a0")} >= {"bagit.txt", "audit.jsonl"}
    ledger.close()


def test_new_appends_keep_the_upgraded_chain_valid(v1):
    ledger = open_ledger(v1.parent)
    old_job = [json.loads(r.line) for r in ledger.audit_rows("job_i1")]
    job = Job("job_i1", "proj_f", "completed", {"id": "job_i1",
                                                "expiresAt": "2031-01-02T00:00:00Z"})
    got = ledger.claim(job, "w", 60, max_lost=3)
    assert got.ok and got.attempts == 1
    ledger.event("note", "after the upgrade", job_id="job_i1")
    ledger.finish_job(job, "w", ARCHIVED)
    ledger.enqueue([Job("job_new", "proj_f", "completed", {"id": "job_new"})])
    ledger.close()
    again = open_ledger(v1.parent)  # a second open applies nothing
    assert again.migrated == []
    brk, n = verify_chain(again.audit_rows())
    assert brk is None and n == 74 + 3  # event, finish, enqueue (the claim: no state change)
    rows = list(again.audit_rows("job_i1"))
    assert [json.loads(r.line) for r in rows][:len(old_job)] == old_job
    brk, _ = verify_chain(((r.line, None, None) for r in rows), link="job_prev",
                          consecutive=False)
    assert brk is None  # the job's own chain (its bag export) runs on across the upgrade
    assert again.job_states()["job_i1"] == ARCHIVED
    assert again.job_states()["job_new"] == QUEUED
    again.close()


def test_two_processes_opening_an_old_ledger_upgrade_it_once(v1):
    opened, errors = [], []
    start = threading.Barrier(3)

    def open_it():
        start.wait()
        try:
            opened.append(open_ledger(v1.parent))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(opened) == 3
    # one of them applied every pending migration, the others none
    assert sorted(len(led.migrated) for led in opened) == [0, 0, len(mig.known("sqlite")) - 1]
    con = sqlite3.connect(v1)
    assert con.execute("SELECT version FROM schema_migrations").fetchall() == \
        [(m.version,) for m in mig.known("sqlite")]
    con.close()
    for led in opened:
        led.close()


def test_read_only_reads_a_version_1_ledger_without_upgrading_it(v1):
    data = v1.read_bytes()
    ledger = open_ledger(v1.parent, read_only=True)
    assert isinstance(ledger, ReadOnlyLedger)
    assert ledger.job_states()["job_i1"] == INCOMPLETE
    assert [p.token for p in ledger.list_pending()] == ["/tmp/.x2.partial", "/tmp/.y.partial"]
    assert ledger.workers() == [] and len(ledger.job_rows()) == 8
    info = ledger.schema_info()
    assert (info["version"], info["legacy"], info["pending"]) == \
        (1, True, [m.name for m in mig.known("sqlite")[1:]])
    # the fleet reads answer on a version-1 ledger too (no leases, no parking yet)
    assert ledger.lease_holder("leader") is None and ledger.dispatchable(5) == []
    stats = ledger.queue_stats()
    assert stats["leased"] == stats["parked"] == stats["claims_total"] == 0
    with pytest.raises(RuntimeError, match=r"dry run: ledger.record_job\(\) would write"):
        ledger.record_job(Job("j", "p", "completed"), ARCHIVED)
    ledger.close()
    assert v1.read_bytes() == data and files_beside(v1) == {"ledger.sqlite"}


def _newer(tmp_path: Path) -> Path:
    open_ledger(tmp_path).close()
    path = tmp_path / "ledger.sqlite"
    con = sqlite3.connect(path)
    con.execute("INSERT INTO schema_migrations VALUES (99, '0099_future', 'ff', 0)")
    con.commit()
    con.close()
    return path


def test_a_newer_schema_is_refused_and_nothing_is_written(tmp_path):
    path = _newer(tmp_path)
    data, names = path.read_bytes(), files_beside(path)
    message = (f"ledger at {path} has schema version 99; this archiver knows up to "
               f"{mig.latest('sqlite')}: upgrade archiver")
    for read_only in (False, True):
        with pytest.raises(LedgerSchemaError) as err:
            open_ledger(tmp_path, read_only=read_only)
        assert str(err.value) == message
    assert path.read_bytes() == data and files_beside(path) == names


def test_an_edited_applied_migration_is_refused(tmp_path):
    open_ledger(tmp_path).close()
    path = tmp_path / "ledger.sqlite"
    con = sqlite3.connect(path)
    con.execute("UPDATE schema_migrations SET sha256=? WHERE version=2", ("0" * 64,))
    con.commit()
    con.close()
    data = path.read_bytes()
    with pytest.raises(LedgerSchemaError, match="migration 0002_claims was applied with "
                                                "sha256 0000"):
        open_ledger(tmp_path)
    assert path.read_bytes() == data


def test_an_edited_migration_file_is_refused(tmp_path, monkeypatch):
    open_ledger(tmp_path / "a").close()
    edited = tmp_path / "migrations"
    shutil.copytree(mig.MIGRATIONS_DIR, edited)
    sql = edited / "sqlite" / "0001_initial.sql"
    sql.write_text(sql.read_text() + "\n-- an innocent comment\n")
    monkeypatch.setattr(mig, "MIGRATIONS_DIR", edited)
    mig.known.cache_clear()
    try:
        with pytest.raises(LedgerSchemaError, match="0001_initial.*edited after it was applied"):
            open_ledger(tmp_path / "a")
    finally:
        monkeypatch.undo()
        mig.known.cache_clear()


def test_checksums_ignore_line_ends_and_statements_split_like_sqlite():
    assert mig.checksum("a;\r\nb;\r\n") == mig.checksum("a;\nb;\n")
    script = ("-- a comment; with a semicolon\nCREATE TABLE t (x TEXT DEFAULT 'a;b');\n"
              "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END;\n-- end\n")
    parts = mig.split_sql(script)
    assert len(parts) == 2 and parts[1].endswith("END;")
    con = sqlite3.connect(":memory:")
    for part in parts:
        con.execute(part)
    with pytest.raises(LedgerSchemaError):
        mig.split_sql("CREATE TABLE t (x TEXT DEFAULT 'unterminated")


def test_a_version_2_ledger_upgrades_to_budgets_keeping_its_claims(tmp_path):
    """A ledger of schema 2 (claims, a named lease) gains 0003's budgets on open."""
    from archiver.ledger.migrations import split_sql
    from archiver.testing.ledger_contract import job
    led = open_ledger(tmp_path)
    assert led.claim(job(1), "w", 60.0, max_lost=3).ok and led.take_lease("leader", "w", 60)
    led.close()
    path = tmp_path / "ledger.sqlite"
    con = sqlite3.connect(path)  # back to version 2, as an older archiver left it
    con.execute("DROP TABLE budgets")
    con.execute("DELETE FROM schema_migrations WHERE version >= 3")
    con.commit()
    con.close()
    assert split_sql(mig.known("sqlite")[2].sql)  # 0003 has statements
    led = open_ledger(tmp_path)
    try:
        assert [m.name for m in led.migrated] == ["0003_budgets"]
        assert led.lease_holder("leader")[0] == "w" and led.job_rows("job_1")[0].owner == "w"
        assert led.take_tokens("api", 1, 10.0, 5) == (1, 0.0)
    finally:
        led.close()
