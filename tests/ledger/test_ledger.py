import itertools
import json
import time

import pytest

from archiver.ledger import ARCHIVED, INCOMPLETE, WAITING, open_ledger
from archiver.model import Job, StoredObject


def job(i, state_status="completed", expires="2026-12-01T00:00:00Z"):
    return Job(f"job_{i}", "proj", state_status, {"id": f"job_{i}", "expiresAt": expires})


def test_copies_pending_and_summary(tmp_path):
    led = open_ledger(tmp_path)
    led.record_job(job(1), INCOMPLETE, "a.bin: dropped")
    led.record_copy("job_1", "a.bin", StoredObject("s", "k/a.bin", 5, {"sha256": "ab"}),
                    received={"sha256": "ab"}, chain=[], verified=True)
    pid = led.add_pending("s", "tmp-1", "job_1", "b.bin")
    led.update_pending(pid, "tmp-1 upload-9")
    assert led.list_pending()[0].token == "tmp-1 upload-9"
    led.remove_pending(pid)
    assert led.list_pending() == []
    row = led.copies("job_1")[("a.bin", "s")]
    assert row.key == "k/a.bin" and row.stored == {"sha256": "ab"} and row.verified
    s = led.summary()
    assert s["jobs"] == {INCOMPLETE: 1} and s["sinks"] == {"s": {"objects": 1, "bytes": 5}}
    assert s["problems"] == [{"job_id": "job_1", "state": INCOMPLETE, "error": "a.bin: dropped"}]
    led.close()


def test_expiry_warnings_listed_until_archived(tmp_path):
    led = open_ledger(tmp_path)
    led.record_job(job(1, "processing"), WAITING)
    led.record_job(job(2), INCOMPLETE)
    led.event("expiry_warning", "expires in 3h", job_id="job_1")
    led.event("expiry_warning", "expires in 2h", job_id="job_2")
    assert {w["job_id"] for w in led.summary()["expiry_warnings"]} == {"job_1", "job_2"}
    led.record_job(job(2), ARCHIVED)
    assert [w["job_id"] for w in led.summary()["expiry_warnings"]] == ["job_1"]
    assert led.count_events("expiry_warning") == 2
    assert led.jobs_with_event("expiry_warning") == {"job_1", "job_2"}
    assert [r.job_id for r in led.open_job_rows([WAITING])] == ["job_1"]
    led.close()


def test_survives_reopen(tmp_path):
    led = open_ledger(tmp_path)
    led.record_job(job(3), ARCHIVED)
    led.close()
    again = open_ledger(tmp_path)
    assert again.job_states() == {"job_3": ARCHIVED}
    again.close()


def _chain(ledger):
    from archiver.compliance.audit import verify_chain
    rows = list(ledger.audit_rows())
    return verify_chain(rows), [json.loads(r.line) for r in rows]


def test_two_writers_on_one_ledger_keep_one_chain(tmp_path):
    """Two connections (as two processes would) interleave records of one job: each sees
    the other's records as the chain's and the job's previous ones."""
    a, b = open_ledger(tmp_path), open_ledger(tmp_path)
    for i in range(3):
        a.event("note", f"a{i}", job_id="job_1")
        b.event("note", f"b{i}", job_id="job_1")
        with a.batch():
            a.event("note", f"a{i}-x", job_id="job_1")
            a.event("note", f"a{i}-y", job_id="job_2")
    (brk, n), records = _chain(a)
    assert brk is None and n == 12
    job1 = [r for r in records if r["job_id"] == "job_1"]
    assert [r["message"] for r in job1] == ["a0", "b0", "a0-x", "a1", "b1", "a1-x",
                                            "a2", "b2", "a2-x"]
    hashes = {r["seq"]: row.hash for r, row in zip(records, a.audit_rows())}
    for before, after in itertools.pairwise(job1):
        assert after["job_prev"] == hashes[before["seq"]]


def test_a_rolled_back_batch_leaves_no_trace_in_the_chain(tmp_path):
    ledger = open_ledger(tmp_path)
    ledger.event("note", "kept", job_id="job_1")
    try:
        with ledger.batch():
            ledger.event("note", "dropped", job_id="job_1")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    ledger.event("note", "after", job_id="job_1")
    (brk, _n), records = _chain(ledger)
    assert brk is None and [r["message"] for r in records] == ["kept", "after"]
    assert records[1]["seq"] == 2


def _dead_worker():
    import subprocess
    import sys

    from archiver.ledger import new_worker_id
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return new_worker_id(pid=proc.pid)  # this host, a pid that is gone


def test_a_lease_of_a_dead_process_on_this_host_is_free_at_once(tmp_path):
    """SQLite is shared on one host only: a holder whose pid is gone (kill -9) holds
    nothing, whatever its TTL said; taking its job over counts a lost lease."""
    from archiver.ledger import QUEUED
    led = open_ledger(tmp_path)
    dead = _dead_worker()
    assert led.claim(job(1), dead.id, 3600, max_lost=3).ok
    assert led.claim(job(2), dead.id, 3600, max_lost=3).ok
    got = led.claim(job(1), "w2", 60, max_lost=3)
    assert got.ok and got.lost_leases == 1
    got = led.claim_next("w3", 60, max_lost=3)
    assert got.job_id == "job_2" and got.lost_leases == 1
    (lease,) = led.lease_rows(["job_2"])
    assert lease.owner == "w3" and led.job_states()["job_2"] == QUEUED
    alive = led.claim(job(3), "host:1:abc", 3600, max_lost=3)  # not a worker id of this host
    assert alive.ok and led.claim(job(3), "w4", 60, max_lost=3).reason == "held"
    led.close()


def test_a_write_waits_briefly_for_another_process_lock_then_is_refused(tmp_path):
    """BEGIN IMMEDIATE retries in sub-millisecond steps while another connection (another
    process) holds the write lock, for as long as the connection's busy timeout, then
    raises SQLite's "database is locked" (which the CLI turns into one line)."""
    import sqlite3
    import threading

    ledger = open_ledger(tmp_path)
    other = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None,
                            check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.2, lambda: other.execute("COMMIT"))
    timer.start()
    t0 = time.monotonic()
    ledger.event("note", "after the other writer")
    waited = time.monotonic() - t0
    timer.join()
    assert 0.15 <= waited < 5
    assert [e["message"] for e in ledger.events()] == ["after the other writer"]

    ledger._busy_timeout = 0.1
    other.execute("BEGIN IMMEDIATE")
    t0 = time.monotonic()
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            ledger.event("note", "refused")
    finally:
        other.execute("COMMIT")
    assert time.monotonic() - t0 < 5
    ledger.event("note", "once the lock is free")
    assert [e["message"] for e in ledger.events()] == ["after the other writer",
                                                        "once the lock is free"]
