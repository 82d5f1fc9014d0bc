"""Group commit: many threads' writes share transactions, each caller still waits for its
own commit, and one failing unit fails alone."""

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from archiver.ledger import groupcommit, open_ledger
from archiver.ledger.groupcommit import GroupCommitter


def test_concurrent_writes_are_committed_when_the_calls_return(tmp_path):
    ledger = open_ledger(tmp_path)
    # another connection sees only committed rows
    other = sqlite3.connect(tmp_path / "ledger.sqlite", check_same_thread=False)
    other_lock = threading.Lock()

    def write(i):
        ledger.event("note", f"n{i}", job_id=f"job_{i % 7}")
        # committed before the call returned: another connection sees it
        with other_lock:
            return other.execute("SELECT COUNT(*) FROM events WHERE message=?",
                                 (f"n{i}",)).fetchone()[0]

    with ThreadPoolExecutor(16) as pool:
        seen = list(pool.map(write, range(400)))
    assert seen == [1] * 400
    assert other.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 400
    from archiver.ledger.chainrules import verify_chain
    brk, n = verify_chain(ledger.audit_rows())
    assert brk is None and n == 400


def test_units_share_transactions_under_load(tmp_path):
    transactions = []
    lock = threading.Lock()

    class Counting:
        def __enter__(self):
            with lock:
                transactions.append(1)

        def __exit__(self, *exc):
            return False

    committer = GroupCommitter(Counting, "test")
    slow = threading.Event()

    def unit(i):
        if i == 0:
            slow.wait(5)  # holds the first transaction open while the others queue
        return i * 2

    with ThreadPoolExecutor(64) as pool:
        first = pool.submit(committer.run, lambda: unit(0))
        time.sleep(0.05)
        rest = [pool.submit(committer.run, lambda i=i: unit(i)) for i in range(1, 50)]
        time.sleep(0.05)
        slow.set()
        assert first.result() == 0
        assert [f.result() for f in rest] == [i * 2 for i in range(1, 50)]
    committer.close()
    assert len(transactions) <= 4  # 50 units: the first alone, the rest together


def test_a_failing_unit_fails_alone_and_the_others_are_kept(tmp_path):
    ledger = open_ledger(tmp_path)
    ledger.add_pending("local", "tok", "job_1", "a")
    hold = threading.Event()

    def bad():
        # a duplicate primary key: only this unit's statements are rolled back
        ledger._exec_write("INSERT INTO pending (id, sink, token, started) VALUES (1,'x','y',0)")

    with ThreadPoolExecutor(16) as pool:
        first = pool.submit(ledger._writer.run, lambda: hold.wait(5))  # others queue behind
        time.sleep(0.05)
        goods = [pool.submit(ledger.event, "note", f"ok{i}", job_id="job_1") for i in range(4)]
        failed = pool.submit(bad)
        goods += [pool.submit(ledger.event, "note", f"ok{i}", job_id="job_1")
                  for i in range(4, 8)]
        time.sleep(0.05)
        hold.set()
        first.result()
        with pytest.raises(sqlite3.IntegrityError):
            failed.result()
        for f in goods:
            f.result()
    assert sorted(e["message"] for e in ledger.events()) == sorted(f"ok{i}" for i in range(8))
    from archiver.ledger.chainrules import verify_chain
    brk, n = verify_chain(ledger.audit_rows())
    assert brk is None and n == 8


def test_the_writer_thread_ends_when_idle_and_comes_back(tmp_path, monkeypatch):
    monkeypatch.setattr(groupcommit, "IDLE_EXIT", 0.05)
    ledger = open_ledger(tmp_path)
    ledger.event("note", "one")
    deadline = time.monotonic() + 5
    while ledger._writer._thread is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ledger._writer._thread is None
    ledger.event("note", "two")
    assert [e["message"] for e in ledger.events()] == ["one", "two"]
    ledger.close()
    assert not any(t.name.startswith("ledger-writer") and t.is_alive()
                   and t is ledger._writer._thread for t in threading.enumerate())


def test_close_waits_for_queued_work_and_stops_the_thread(tmp_path):
    ledger = open_ledger(tmp_path)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: ledger.event("note", str(i)), range(40)))
    thread = ledger._writer._thread
    ledger.close()
    assert thread is None or not thread.is_alive()
    reopened = open_ledger(tmp_path)
    assert len(reopened.events()) == 40
