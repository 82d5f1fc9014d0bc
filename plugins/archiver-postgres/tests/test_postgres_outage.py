"""Surviving a PostgreSQL restart: writes in flight are retried (for up to
``ledger.outage_tolerance``) and recorded exactly once; past the tolerance a write fails
loudly with a LedgerError and nothing of it is recorded.

These tests restart or stop the local cluster (``pg_ctlcluster``), so they run only where
PostgreSQL is local and controllable, and they always leave it running (the
``controllable`` fixture starts it again and waits until it answers).
"""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest
from archiver_postgres import PostgresLedger
from archiver_postgres.connections import LedgerUnavailable
from pg_testing import pg_ctl, wait_until_up

from archiver.errors import LedgerError
from archiver.ledger.chainrules import verify_chain
from archiver.testing.ledger_contract import MAX_LOST, TTL, job

MAX_WRITES = 20_000


def test_writes_in_flight_survive_a_restart(controllable, ledger_url, caplog):
    ledger = PostgresLedger(ledger_url, outage_tolerance=60)
    other = PostgresLedger(ledger_url, outage_tolerance=60)
    errors: list[BaseException] = []
    progress, stop = [0], threading.Event()

    def writer():
        try:
            for n in range(MAX_WRITES):
                if stop.is_set():
                    return
                if n % 10 == 0:
                    with ledger.batch():  # a group of writes: all or nothing
                        ledger.event("note", f"b{n}", job_id=f"job_{n % 7}")
                        ledger.record_job(job(n), "incomplete", "retry")
                else:
                    ledger.event("note", f"e{n}", job_id=f"job_{n % 7}")
                progress[0] = n + 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while progress[0] < 50 and thread.is_alive():
            time.sleep(0.01)
        pg_ctl("restart", "-m", "fast")  # every session is terminated mid-flight
        after = progress[0]
        while progress[0] < after + 50 and thread.is_alive():
            time.sleep(0.01)
        stop.set()
        thread.join(120)
        assert not thread.is_alive() and errors == [], errors
        written = progress[0]
        assert any("retrying for up to 60s" in r.getMessage() for r in caplog.records), \
            "no write was in flight during the restart"
        # a claim after the restart, from another handle (its connections were cut too)
        assert other.claim(job("after"), "w", TTL, max_lost=MAX_LOST).ok
        rows = list(ledger.audit_rows())
        brk, n = verify_chain(rows)
        assert brk is None, str(brk)
        messages = [json.loads(r.line)["message"] for r in rows]
        notes = [m for m in messages if m[:1] in ("b", "e")]
        expected = [("b" if n % 10 == 0 else "e") + str(n) for n in range(written)]
        assert notes == expected  # each write recorded once, in order: none lost, none twice
        assert len(ledger.job_states()) == len(range(0, written, 10)) + 1
    finally:
        stop.set()
        thread.join(120)
        ledger.close()
        other.close()


def test_past_the_tolerance_a_write_fails_loudly(controllable, ledger_url, caplog):
    ledger = PostgresLedger(ledger_url, outage_tolerance=1)
    ledger.event("note", "before")
    pg_ctl("stop", "-m", "fast")
    try:
        began = time.monotonic()
        with pytest.raises(LedgerError) as err:
            ledger.event("note", "while down")
        took = time.monotonic() - began
        assert isinstance(err.value, LedgerUnavailable)
        assert 1.0 <= took < 15, took
        assert "did not answer" in str(err.value) and "outage_tolerance 1s" in str(err.value)
        assert "was not recorded" in str(err.value)
        with pytest.raises(LedgerError):
            ledger.job_states()  # reads, too, give up after the tolerance
    finally:
        pg_ctl("start")
        wait_until_up()
    ledger.event("note", "after")  # the handle works again once the server is back
    messages = [json.loads(r.line)["message"] for r in ledger.audit_rows()]
    assert messages == ["before", "after"]
    ledger.close()


# --------------------------------------------------------------------------- COMMIT lost
def _break_next_commit(ledger: PostgresLedger, *, commit_first: bool) -> list[str]:
    """The next COMMIT of ``ledger``'s writer loses its connection: after the server
    committed (the answer is lost) or before (the server aborts the transaction)."""
    conn = ledger._conns.writer()
    real, seen = conn.commit, []

    def commit():
        conn.commit = real
        if commit_first:
            real()
        seen.append("broken")
        conn.close()  # closing inside a transaction: the server rolls it back
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    conn.commit = commit
    return seen


@pytest.mark.parametrize("commit_first", [True, False], ids=["committed", "aborted"])
def test_a_commit_whose_answer_is_lost_is_recorded_once(ledger_url, commit_first, caplog):
    ledger = PostgresLedger(ledger_url, outage_tolerance=30)
    try:
        ledger.event("note", "first", job_id="job_1")
        with ledger._lock:
            seen = _break_next_commit(ledger, commit_first=commit_first)
        with ledger.batch():
            ledger.record_job(job(1), "archived")
            ledger.event("note", "second", job_id="job_1")
        assert seen == ["broken"]
        messages = [json.loads(r.line)["message"] for r in ledger.audit_rows()]
        assert messages == ["first", "archived", "second"]  # once, whichever way it went
        assert ledger.job_states() == {"job_1": "archived"}
        assert verify_chain(ledger.audit_rows())[0] is None
        assert any("went through" in r.getMessage() for r in caplog.records)
    finally:
        ledger.close()


def test_a_session_idle_inside_a_transaction_is_ended_by_the_server(ledger_url):
    """A worker stopped (SIGSTOP) in the middle of a ledger transaction would hold job
    rows and the audit lock for the whole fleet: its sessions carry
    idle_in_transaction_session_timeout, so PostgreSQL ends them (and their locks)."""
    from archiver_postgres import PostgresLedger
    from archiver_postgres.connections import IDLE_IN_TRANSACTION_MS
    led = PostgresLedger(ledger_url)
    try:
        shown = led._conns.read(lambda c: c.execute(
            "SHOW idle_in_transaction_session_timeout").fetchone()[0])
        assert shown == f"{IDLE_IN_TRANSACTION_MS // 1000}s"
        with led._conns.connect(autocommit=False) as conn:  # the URL's options stay
            assert conn.execute("SHOW search_path").fetchone()[0].startswith("archiver_t_")
    finally:
        led.close()
