"""Many writers, one ledger: claims have one winner, the audit chain stays one chain.

* 1,000 trials of two claimers (two handles, two writer connections, two threads)
  racing for one job: ``claim`` (push) and ``claim_next`` (pull) alternately; each trial
  has exactly one winner.
* 8 spawned processes append 500 audit records each at once (``event`` calls, each its
  own transaction): one gapless chain that ``verify_chain`` accepts, every job's chain too.
* 4 spawned processes claim (``claim_next``) and finish 400 jobs, as
  ``tests/ledger/test_multiprocess_claims.py`` does for SQLite: each job finished once.
* A fork attempt, two transactions linking to the same predecessor without the lock, is
  a constraint error.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections import Counter

import psycopg
import pytest
from archiver_postgres import PostgresLedger

from archiver.errors import LedgerError
from archiver.ledger import ARCHIVED, new_worker_id
from archiver.ledger.chainrules import GENESIS, line_hash, make_line, verify_chain
from archiver.plugins import build_plugin_manager
from archiver.testing.ledger_contract import MAX_LOST, TTL, claim_worker, job
from archiver.testing.ledger_contract_fleet import lease_racer

TRIALS = 1000
PROCESSES, APPENDS = 8, 500


def test_two_claimers_one_winner_over_1000_trials(ledger_url, record_property):
    a, b = PostgresLedger(ledger_url), PostgresLedger(ledger_url)
    start, stop = threading.Barrier(3), threading.Event()
    results: dict[str, list] = {"w1": [], "w2": []}
    trial = [0]

    def claimer(handle, who):
        while True:
            start.wait()
            if stop.is_set():
                return
            i = trial[0]
            if i % 2 == 0:
                got = handle.claim(job(i), who, TTL, max_lost=MAX_LOST)
            else:
                got = handle.claim_next(who, TTL, max_lost=MAX_LOST)
            results[who].append((i, got))
            start.wait()

    threads = [threading.Thread(target=claimer, args=(h, w), daemon=True)
               for h, w in ((a, "w1"), (b, "w2"))]
    for t in threads:
        t.start()
    began = time.perf_counter()
    try:
        for i in range(TRIALS):
            trial[0] = i
            if i % 2:
                a.enqueue([job(i)])  # the only claimable job: the earlier ones are held
            start.wait(timeout=60)   # go
            start.wait(timeout=60)   # both answered
        elapsed = time.perf_counter() - began
        stop.set()
        start.wait(timeout=60)
        for t in threads:
            t.join(10)
        wins = 0
        for (i1, r1), (i2, r2) in zip(results["w1"], results["w2"]):
            assert i1 == i2
            won = [r for r in (r1, r2) if r is not None and r.ok]
            assert len(won) == 1, (i1, r1, r2)
            assert won[0].job_id == f"job_{i1}"
            lost = r2 if won[0] is r1 else r1
            if i1 % 2 == 0:
                assert lost.reason == "held" and lost.holder in ("w1", "w2")
            else:
                assert lost is None
            wins += 1
        assert wins == TRIALS
        owners = {r.job_id: r.owner for r in a.job_rows()}
        assert len(owners) == TRIALS and all(o in ("w1", "w2") for o in owners.values())
        brk, n = verify_chain(a.audit_rows())
        assert brk is None and n == TRIALS  # one "queued" record per job, no duplicate
        record_property("race_seconds", round(elapsed, 2))
        print(f"\n{TRIALS} claim races: {elapsed:.2f}s")
    finally:
        stop.set()
        a.close()
        b.close()


def _appender(url: str, index: int, count: int, start_at: float) -> float:
    ledger = PostgresLedger(url)
    worker = new_worker_id()
    try:
        time.sleep(max(0.0, start_at - time.time()))
        began = time.perf_counter()
        for n in range(count):
            ledger.event("note", f"p{index} n{n}", job_id=f"job_{(index * 7 + n) % 13}",
                         data={"worker": worker.id, "n": n})
        return time.perf_counter() - began
    finally:
        ledger.close()


def test_eight_processes_appending_leave_one_gapless_chain(ledger_url, record_property):
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0  # spawned interpreters need a moment to import
    with ctx.Pool(PROCESSES) as pool:
        began = time.time()
        spent = pool.starmap(_appender, [(ledger_url, i, APPENDS, start_at)
                                         for i in range(PROCESSES)])
        wall = time.time() - max(began, start_at)
    ledger = PostgresLedger(ledger_url)
    try:
        rows = list(ledger.audit_rows())
        brk, n = verify_chain(rows)
        assert brk is None, str(brk)
        assert n == PROCESSES * APPENDS and [r.seq for r in rows] == list(range(1, n + 1))
        for j in range(13):
            brk, _ = verify_chain(ledger.audit_rows(f"job_{j}"), link="job_prev",
                                  consecutive=False)
            assert brk is None, str(brk)
        per_process = {json.loads(r.line)["message"].split()[0] for r in rows}
        assert len(per_process) == PROCESSES
    finally:
        ledger.close()
    record_property("appends_seconds", round(wall, 2))
    print(f"\n{PROCESSES} processes x {APPENDS} appends: {wall:.2f}s wall "
          f"(slowest process {max(spent):.2f}s)")


def _insert(conn, seq, prev, job_id=None, job_prev=None):
    line = make_line(seq, time.time(), "note", prev=prev, job_prev=job_prev, job_id=job_id)
    conn.execute("INSERT INTO audit (seq, job_id, prev, job_prev, line, hash)"
                 " VALUES (%s,%s,%s,%s,%s,%s)",
                 (seq, job_id, prev, job_prev, line, line_hash(line)))
    return line_hash(line)


def test_a_fork_is_a_constraint_error(ledger_url):
    ledger = PostgresLedger(ledger_url)
    ledger.event("note", "first", job_id="job_1")
    ledger.close()
    (head_seq, head), = psycopg.connect(ledger_url).execute(
        "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchall()
    t1 = psycopg.connect(ledger_url)  # two transactions that skip the advisory lock
    t2 = psycopg.connect(ledger_url)
    try:
        _insert(t1, head_seq + 1, head)
        t1.commit()
        with pytest.raises(psycopg.errors.UniqueViolation, match="audit_prev_unique"):
            _insert(t2, head_seq + 2, head)  # a gap-free seq, but the same predecessor
        t2.rollback()
        with pytest.raises(psycopg.errors.UniqueViolation, match="audit_pkey"):
            _insert(t2, head_seq + 1, line_hash("x"))  # the same seq
        t2.rollback()
        first_job = t1.execute("SELECT job_prev FROM audit WHERE job_id='job_1'").fetchone()[0]
        assert first_job == GENESIS
        t1.commit()  # (TRUNCATE below would wait for its lock)
        with pytest.raises(psycopg.errors.UniqueViolation, match="audit_job_prev_unique"):
            _insert(t2, head_seq + 2, line_hash("y"), job_id="job_1", job_prev=GENESIS)
        t2.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            t2.execute("UPDATE audit SET line = line")
        t2.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            t2.execute("DELETE FROM audit")
        t2.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            t2.execute("TRUNCATE audit")
        t2.rollback()
        # and a ledger handle whose write hits such a refusal says so, as a LedgerError
        ledger = PostgresLedger(ledger_url)
        with pytest.raises(LedgerError, match="a write was refused: .*append-only"):
            ledger._write_now(lambda: ledger._q("DELETE FROM audit"), "test")
        ledger.close()
    finally:
        t1.close()
        t2.close()


def _claim_worker(url: str, start_at: float, deadline: float) -> dict:
    """The contract's claim_worker in a fresh process: the plugin schemes come from the
    plugin manager, as in every command."""
    build_plugin_manager()
    return claim_worker(url, start_at, deadline)


def test_four_processes_claim_every_job_once(ledger_url):
    processes, jobs = 4, 400
    ledger = PostgresLedger(ledger_url)
    assert ledger.enqueue([job(f"{i:04d}") for i in range(jobs)]) == jobs
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        start_at = time.time() + 3.0
        results = pool.starmap(_claim_worker, [(ledger_url, start_at, start_at + 30)]
                               * processes)
    finished = Counter(j for r in results for j in r["done"])
    assert len(finished) == jobs and set(finished.values()) == {1}, "a job finished twice"
    assert sum(r["lost"] for r in results) == 0, "a lease was lost: a double claim"
    assert all(len(r["done"]) > 0 for r in results), [len(r["done"]) for r in results]
    assert set(ledger.job_states().values()) == {ARCHIVED}
    records = [json.loads(r.line) for r in ledger.audit_rows()]
    assert Counter(r["message"] for r in records if r["kind"] == "job") == \
        {"queued": jobs, ARCHIVED: jobs}
    assert all(r.attempts == 1 and r.owner is None for r in ledger.job_rows())
    assert verify_chain(ledger.audit_rows()) == (None, 2 * jobs)
    assert ledger.workers() == []
    ledger.close()


def _lease_racer(url: str, start_at: float, rounds: int) -> list[bool]:
    build_plugin_manager()
    return lease_racer(url, start_at, rounds)


def test_four_processes_one_lease_holder_each_round(ledger_url):
    """The dispatcher's leader lease: processes racing for it (fresh, and held by a
    lapsed holder) end with exactly one holder each round."""
    processes, rounds = 4, 8
    ledger = PostgresLedger(ledger_url)
    for rnd in range(1, rounds, 2):
        assert ledger.take_lease(f"leader-{rnd}", "old", -1.0)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        start_at = time.time() + 3.0
        results = pool.starmap(_lease_racer, [(ledger_url, start_at, rounds)] * processes)
    for rnd in range(rounds):
        assert sum(r[rnd] for r in results) == 1, (rnd, results)
    ledger.close()
