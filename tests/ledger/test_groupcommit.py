"""Group commit: many threads' writes share transactions, each caller still waits for its
own commit, and one failing unit fails alone."""

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from archiver.ledger import open_ledger
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


def test_an_uncontended_write_runs_on_the_calling_thread(tmp_path):
    # no hand-off to another thread: the caller runs its own transaction
    ran_on = []

    class Recording:
        def __enter__(self):
            ran_on.append(threading.current_thread())

        def __exit__(self, *exc):
            return False

    committer = GroupCommitter(Recording, "test")
    assert committer.run(lambda: 7) == 7
    assert ran_on == [threading.current_thread()]
    # a unit that calls the committer again runs inside the same transaction
    assert committer.run(lambda: committer.run(lambda: 3) + 1) == 4
    assert len(ran_on) == 2


def test_a_failing_group_wakes_every_waiter_with_its_own_error(tmp_path):
    entered = threading.Event()
    release = threading.Event()

    class Failing:
        def __enter__(self):
            entered.set()
            release.wait(5)

        def __exit__(self, *exc):
            return False

    committer = GroupCommitter(Failing, "test")
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(committer.run, lambda: 1)
        assert entered.wait(5)
        rest = [pool.submit(committer.run, lambda: 1 / 0) for _ in range(6)]
        time.sleep(0.05)
        release.set()
        assert first.result(timeout=5) == 1
        for f in rest:
            with pytest.raises(ZeroDivisionError):
                f.result(timeout=5)
    committer.close()


def test_close_waits_for_queued_work(tmp_path):
    ledger = open_ledger(tmp_path)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: ledger.event("note", str(i)), range(40)))
    ledger.close()
    reopened = open_ledger(tmp_path)
    assert len(reopened.events()) == 40
