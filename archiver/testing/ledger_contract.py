"""The contract every ledger backend (SQLite, PostgreSQL, third-party) must pass.

Subclass :class:`LedgerContract` in a test module and provide two fixtures: ``ledger``,
a fresh, empty ledger (closed after the test), and ``reopen``, a callable returning
another handle on the *same* ledger, as a second process would open it::

    import pytest
    from archiver.ledger import open_ledger
    from archiver.testing.ledger_contract import LedgerContract

    class TestMyLedger(LedgerContract):
        @pytest.fixture
        def ledger(self, tmp_path):
            led = open_ledger(tmp_path)
            yield led
            led.close()

        @pytest.fixture
        def reopen(self, tmp_path):
            return lambda: open_ledger(tmp_path)

Handles made by ``reopen`` in a test are closed by the suite. The suite uses only the
:class:`archiver.ledger.Ledger` protocols. Leases are made to run out with a negative
TTL (``lease_until`` in the past), so no test waits for a clock.

The fleet methods (``dispatchable``, ``queued_job``, ``queue_stats``, named leases, token
buckets) are covered by :class:`~archiver.testing.ledger_contract_fleet.FleetContract`, a
base of :class:`LedgerContract`.

:func:`claim_worker` is the body of the multi-process test (spawned processes claiming
with ``claim_next`` and finishing with ``finish_job`` on one ledger); a backend's test
module runs it with ``multiprocessing`` (see ``tests/ledger/test_multiprocess_claims.py``).
"""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from ..errors import LeaseLost
from ..ledger import (
    ARCHIVED,
    INCOMPLETE,
    NOTHING,
    QUEUED,
    WAITING,
    AuditRow,
    BagFileRow,
    Claim,
    ClaimRefused,
    CopyRow,
    EventRow,
    JobRow,
    OpenJobRow,
    PendingRow,
    WorkerRow,
    new_worker_id,
    open_ledger,
)
from ..ledger.chainrules import verify_chain
from ..model import Job, StoredObject
from .ledger_contract_fleet import FleetContract

TTL, MAX_LOST = 60.0, 3


def job(i: int | str, status: str = "completed", expires: str | None = "2031-01-01T00:00:00Z",
        project: str = "proj") -> Job:
    """A job like the API returns (``expiresAt`` optional)."""
    raw = {"id": f"job_{i}", "projectId": project, "status": status}
    if expires:
        raw["expiresAt"] = expires
    return Job(f"job_{i}", project, status, raw)


def chain_ok(ledger) -> int:
    """Assert the ledger's audit chain verifies; the number of records."""
    brk, n = verify_chain(ledger.audit_rows())
    assert brk is None, f"the audit chain is broken: {brk}"
    return n


def records(ledger, job_id: str | None = None) -> list[dict]:
    return [json.loads(r.line) for r in ledger.audit_rows(job_id)]


def row(ledger, job_id: str) -> JobRow:
    rows = ledger.job_rows(job_id)
    assert len(rows) == 1, f"job_rows({job_id!r}) = {rows!r}"
    return rows[0]


def stored(sink: str = "s", key: str = "k/a.bin", size: int = 5) -> StoredObject:
    return StoredObject(sink, key, size, {"sha256": "ab" * 32}, location=f"/x/{key}",
                        provider_checksum={"etag": "e"}, extra={"read_only": True})


class LedgerContract(FleetContract):
    """Base class of a backend's contract tests (see the module docstring); the fleet
    cases (queue, named leases, token buckets) are :class:`FleetContract`'s."""

    @pytest.fixture
    def ledger(self):
        raise NotImplementedError("subclasses of LedgerContract provide a 'ledger' fixture")

    @pytest.fixture
    def reopen(self):
        raise NotImplementedError("subclasses of LedgerContract provide a 'reopen' fixture: "
                                  "a callable opening another handle on the same ledger")

    @pytest.fixture
    def other(self, reopen):
        handle = reopen()
        yield handle
        handle.close()

    # ------------------------------------------------------------------ records
    def test_job_records_round_trip(self, ledger):
        ledger.record_job(job(1), INCOMPLETE, "a.bin: dropped")
        ledger.record_job(job(2, "processing"), WAITING)
        assert ledger.job_states() == {"job_1": INCOMPLETE, "job_2": WAITING}
        r = row(ledger, "job_1")
        assert isinstance(r, JobRow) and r.error == "a.bin: dropped" and r.owner is None
        ledger.record_job(job(1), ARCHIVED)
        first = row(ledger, "job_1").archived_at
        ledger.record_job(job(1), ARCHIVED)
        assert first is not None and row(ledger, "job_1").archived_at == first
        opened = ledger.open_job_rows([WAITING])
        assert [o.job_id for o in opened] == ["job_2"] and isinstance(opened[0], OpenJobRow)
        assert opened[0].raw["status"] == "processing"
        assert [r["kind"] for r in records(ledger, "job_1")] == ["job"] * 3

    def test_record_job_leaves_the_lease_alone(self, ledger):
        assert ledger.claim(job(1), "w", TTL, max_lost=MAX_LOST).ok
        ledger.record_job(job(1), INCOMPLETE, "progress")
        r = row(ledger, "job_1")
        assert (r.state, r.owner, r.attempts) == (INCOMPLETE, "w", 1)
        assert r.lease_until is not None and r.lease_until > time.time()
        ledger.finish_job(job(1), "w", ARCHIVED)  # still the owner's to finish
        assert row(ledger, "job_1").owner is None

    def test_claims_and_enqueue_never_downgrade_a_settled_job(self, ledger):
        ledger.record_job(job(1), ARCHIVED)
        ledger.record_job(job(2), NOTHING)
        assert ledger.enqueue([job(1), job(2), job(3)]) == 1
        refused = ledger.claim(job(1), "w", TTL, max_lost=MAX_LOST)
        assert refused == ClaimRefused("settled") and not refused.ok
        assert ledger.job_states() == {"job_1": ARCHIVED, "job_2": NOTHING, "job_3": QUEUED}

    def test_copies_artifacts_and_fixity_round_trip(self, ledger):
        ledger.record_job(job(1), INCOMPLETE)
        ledger.record_artifact("job_1", "a.bin", kind="artifact", key="k/a.bin",
                               filename="a.bin", size=5, received={"sha256": "ab" * 32},
                               state="stored", error=None)
        ledger.record_copy("job_1", "a.bin", stored(), received={"sha256": "ab" * 32},
                           chain=[{"transform": "checksum"}], verified=True)
        c = ledger.copies("job_1")[("a.bin", "s")]
        assert isinstance(c, CopyRow) and (c.key, c.size, c.verified) == ("k/a.bin", 5, True)
        assert c.stored == c.received == {"sha256": "ab" * 32} and c.location == "/x/k/a.bin"
        assert c.provider_checksum == {"etag": "e"} and c.stored_at is not None
        (r,) = ledger.copy_rows(sink="s")
        assert r.checked_at is None and r.project_id == "proj"
        ledger.record_fixity("job_1", "a.bin", "s", True, "ok", {"key": "k/a.bin"})
        (r,) = ledger.copy_rows(job_id="job_1")
        assert r.checked_at is not None
        report = ledger.job_report("job_1")
        assert report["copies"][0]["chain"] == [{"transform": "checksum"}]
        assert report["artifacts"][0]["state"] == "stored"
        assert [x["kind"] for x in records(ledger)] == ["job", "received", "copy", "retention",
                                                        "fixity"]
        ledger.record_bag_file("job_1", "s", "bagit.txt", "k/bagit.txt", 9, {"sha256": "cd"})
        (b,) = ledger.bag_files("job_1", "s")
        assert isinstance(b, BagFileRow) and b.digests == {"sha256": "cd"}
        assert ledger.summary()["sinks"] == {"s": {"objects": 1, "bytes": 5}}
        chain_ok(ledger)

    def test_events(self, ledger):
        ledger.event("expiry_warning", "expires in 3h", job_id="job_1", data={"hours": 3})
        ledger.event("note", "hello")
        assert [e["message"] for e in ledger.events()] == ["expires in 3h", "hello"]
        typed = ledger.event_rows("job_1")
        assert len(typed) == 1 and isinstance(typed[0], EventRow) and typed[0].kind == \
            "expiry_warning"
        assert ledger.count_events("note") == 1
        assert ledger.jobs_with_event("expiry_warning") == {"job_1"}
        assert records(ledger)[0]["data"] == {"hours": 3}

    # ------------------------------------------------------------------ batch
    def test_batch_commits_together_and_reads_see_before(self, ledger, other):
        with ledger.batch():
            ledger.record_job(job(1), INCOMPLETE)
            ledger.event("note", "in batch", job_id="job_1")
            with ledger.batch():  # nested: joins the outer block
                ledger.event("note", "nested", job_id="job_1")
            assert ledger.job_states() == {} and other.job_states() == {}
            with pytest.raises(RuntimeError):
                ledger.add_pending("s", "tok", "job_1", "a")
        assert other.job_states() == {"job_1": INCOMPLETE}
        assert [e["message"] for e in other.events()] == ["in batch", "nested"]
        chain_ok(ledger)

    def test_batch_writes_nothing_when_it_raises(self, ledger):
        ledger.event("note", "kept", job_id="job_1")
        with pytest.raises(ValueError), ledger.batch():
            ledger.record_job(job(1), ARCHIVED)
            ledger.event("note", "dropped", job_id="job_1")
            raise ValueError("boom")
        ledger.event("note", "after", job_id="job_1")
        assert ledger.job_states() == {}
        assert [r["message"] for r in records(ledger)] == ["kept", "after"]
        assert chain_ok(ledger) == 2

    # ------------------------------------------------------------------ pending writers
    def test_pending_writers_with_owner(self, ledger):
        worker = new_worker_id()
        ledger.register_worker(worker)
        mine = ledger.add_pending("s", "tmp-1", "job_1", "a.bin", owner=worker.id)
        legacy = ledger.add_pending("s", "tmp-2", None, None)
        ledger.update_pending(mine, "tmp-1 upload-9")
        rows = ledger.list_pending()
        assert [type(r) for r in rows] == [PendingRow, PendingRow]
        assert (rows[0].id, rows[0].token, rows[0].owner) == (mine, "tmp-1 upload-9", worker.id)
        assert (rows[0].host, rows[0].pid) == (worker.host, worker.pid)
        assert rows[0].owner_heartbeat is not None
        assert (rows[1].owner, rows[1].host, rows[1].pid, rows[1].owner_heartbeat) == \
            (None, None, None, None)
        ledger.remove_pending(legacy)
        ledger.unregister_worker(worker.id)
        (left,) = ledger.list_pending()
        assert left.owner_heartbeat is None and left.host == worker.host  # owner gone
        assert ledger.summary()["pending_writers"] == 1

    # ------------------------------------------------------------------ audit chain
    def test_two_handles_interleaving_keep_one_chain(self, ledger, other):
        for i in range(3):
            ledger.event("note", f"a{i}", job_id="job_1")
            other.event("note", f"b{i}", job_id="job_1")
            with ledger.batch():
                ledger.event("note", f"a{i}-x", job_id="job_1")
                ledger.event("note", f"a{i}-y", job_id="job_2")
        assert chain_ok(ledger) == 12 and chain_ok(other) == 12
        rows: list[AuditRow] = list(ledger.audit_rows("job_1"))
        recs = [json.loads(r.line) for r in rows]
        assert [r["message"] for r in recs] == ["a0", "b0", "a0-x", "a1", "b1", "a1-x",
                                                "a2", "b2", "a2-x"]
        for before, after in zip(rows, recs[1:]):
            assert after["job_prev"] == before.hash

    # ------------------------------------------------------------------ claims
    def test_one_winner_among_two_handles(self, ledger, other):
        ledger.enqueue([job(1)])
        start, results = threading.Barrier(2), []

        def claim(handle, who):
            start.wait()
            results.append(handle.claim(job(1), who, TTL, max_lost=MAX_LOST))

        threads = [threading.Thread(target=claim, args=(h, w))
                   for h, w in ((ledger, "w1"), (other, "w2"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        won = [r for r in results if r.ok]
        lost = [r for r in results if not r.ok]
        assert len(won) == 1 and len(lost) == 1, results
        assert lost[0].reason == "held" and lost[0].holder in ("w1", "w2")
        assert row(ledger, "job_1").owner == lost[0].holder

    def test_held_lease_refused_expired_taken_over(self, ledger, other):
        got = ledger.claim(job(1), "w1", -1.0, max_lost=MAX_LOST)  # runs out at once
        assert isinstance(got, Claim) and got.ok and (got.attempts, got.lost_leases) == (1, 0)
        assert got.job() == job(1) and got.raw["expiresAt"] == "2031-01-01T00:00:00Z"
        taken = other.claim(job(1), "w2", TTL, max_lost=MAX_LOST)
        assert taken.ok and (taken.attempts, taken.lost_leases) == (2, 1)
        assert ledger.claim(job(1), "w3", TTL, max_lost=MAX_LOST) == \
            ClaimRefused("held", "w2")
        assert ledger.claim(job(1), "w2", TTL, max_lost=MAX_LOST).reason == "held"
        assert ledger.claim(job(1), "w3", TTL, max_lost=MAX_LOST, force=True).reason == "held"
        assert row(ledger, "job_1").state == QUEUED

    def test_parking_at_max_lost_and_force_unparks(self, ledger):
        for n in range(MAX_LOST):
            got = ledger.claim(job(1), f"w{n}", -1.0, max_lost=MAX_LOST)
            assert got.ok, got
        parked = ledger.claim(job(1), "wx", TTL, max_lost=MAX_LOST)
        assert parked == ClaimRefused("parked")
        r = row(ledger, "job_1")
        assert r.parked and r.state == INCOMPLETE and r.owner is None
        assert r.lost_leases == MAX_LOST and "parked after 3 lost leases" in r.error
        events = ledger.event_rows("job_1")
        # each takeover of a lapsed lease is a "lease_lost" event; the last one parks
        assert [e.kind for e in events] == ["lease_lost"] * (MAX_LOST - 1) + ["parked"]
        assert any(rec["kind"] == "parked" for rec in records(ledger, "job_1"))
        assert ledger.claim(job(1), "wx", TTL, max_lost=MAX_LOST).reason == "parked"
        assert ledger.claim_next("wx", TTL, max_lost=MAX_LOST) is None
        assert ledger.enqueue([job(1)]) == 0
        forced = ledger.claim(job(1), "wx", TTL, max_lost=MAX_LOST, force=True)
        assert forced.ok and forced.lost_leases == 0
        r = row(ledger, "job_1")
        assert not r.parked and r.owner == "wx" and r.attempts == MAX_LOST + 1
        chain_ok(ledger)

    def test_claim_next_parks_and_skips(self, ledger):
        ledger.enqueue([job(1, expires="2030-01-01T00:00:00Z"), job(2)])
        for n in range(MAX_LOST):  # the last one's lease, too, runs out
            assert ledger.claim(job(1, expires="2030-01-01T00:00:00Z"), f"w{n}", -1.0,
                                max_lost=MAX_LOST).ok
        got = ledger.claim_next("wz", TTL, max_lost=MAX_LOST)  # job_1 is parked on the way
        assert got.job_id == "job_2"
        assert row(ledger, "job_1").parked

    def test_claim_next_orders_by_expiry(self, ledger):
        jobs = [job("c", expires=None), job("b", expires="2031-06-01T00:00:00Z"),
                job("a", expires="2031-06-01T00:00:00Z"), job("z", expires="2030-01-01T00:00:00Z")]
        assert ledger.enqueue(jobs) == 4
        order = []
        while (got := ledger.claim_next("w", TTL, max_lost=MAX_LOST)) is not None:
            order.append(got.job_id)
        assert order == ["job_z", "job_a", "job_b", "job_c"]  # no expiry last, then by id

    def test_backoff(self, ledger):
        for name in ("a", "b"):
            assert ledger.claim(job(name), "w", TTL, max_lost=MAX_LOST).ok
        ledger.finish_job(job("a"), "w", INCOMPLETE, "failed")  # no backoff
        ledger.finish_job(job("b"), "w", INCOMPLETE, "failed", not_before=time.time() + 3600)
        assert row(ledger, "job_b").not_before > time.time()
        assert ledger.claim(job("b"), "w2", TTL, max_lost=MAX_LOST) == ClaimRefused("backoff")
        assert ledger.enqueue([job("a"), job("b")]) == 1
        assert ledger.claim_next("w2", TTL, max_lost=MAX_LOST).job_id == "job_a"
        assert ledger.claim_next("w2", TTL, max_lost=MAX_LOST) is None
        got = ledger.claim_next("w2", TTL, max_lost=MAX_LOST, ignore_backoff=True)
        assert got.job_id == "job_b" and got.attempts == 2
        assert ledger.release("job_b", "w2")
        assert ledger.claim(job("b"), "w3", TTL, max_lost=MAX_LOST, force=True).ok

    def test_claim_next_claimed_before(self, ledger):
        ledger.enqueue([job(1), job(2)])
        since = time.time()
        first = ledger.claim_next("w", TTL, max_lost=MAX_LOST, claimed_before=since)
        ledger.finish_job(first.job(), "w", INCOMPLETE, "failed")
        second = ledger.claim_next("w", TTL, max_lost=MAX_LOST, claimed_before=since)
        ledger.finish_job(second.job(), "w", INCOMPLETE, "failed")
        assert {first.job_id, second.job_id} == {"job_1", "job_2"}
        assert ledger.claim_next("w", TTL, max_lost=MAX_LOST, claimed_before=since) is None
        assert ledger.claim_next("w", TTL, max_lost=MAX_LOST) is not None

    def test_finish_job_is_fenced(self, ledger, other):
        mine = ledger.claim(job(1), "w1", -1.0, max_lost=MAX_LOST)
        assert mine.ok and other.claim(job(1), "w2", TTL, max_lost=MAX_LOST).ok
        before = list(ledger.audit_rows())
        with pytest.raises(LeaseLost, match="lease lost to w2"):
            ledger.finish_job(job(1), "w1", ARCHIVED)
        with pytest.raises(LeaseLost), ledger.batch():  # the whole batch rolls back
            ledger.event("stored", "x", job_id="job_1")
            ledger.finish_job(job(1), "w1", ARCHIVED)
        assert list(ledger.audit_rows()) == before
        r = row(ledger, "job_1")
        assert (r.state, r.owner, r.error, r.archived_at) == (QUEUED, "w2", None, None)
        other.finish_job(job(1), "w2", ARCHIVED)
        with pytest.raises(LeaseLost, match="lease lost to no worker"):
            other.finish_job(job(1), "w2", ARCHIVED)  # released by the first finish
        r = row(ledger, "job_1")
        assert (r.state, r.owner, r.lost_leases) == (ARCHIVED, None, 0)
        assert [x["message"] for x in records(ledger, "job_1")] == [
            QUEUED, "lease of w1 taken over by w2", ARCHIVED]
        chain_ok(ledger)

    def test_finish_job_inside_a_batch_commits_with_it(self, ledger):
        assert ledger.claim(job(1), "w", TTL, max_lost=MAX_LOST).ok
        with ledger.batch():
            ledger.event("archived", "3 objects", job_id="job_1")
            ledger.finish_job(job(1), "w", ARCHIVED)
        assert ledger.job_states() == {"job_1": ARCHIVED}
        assert [r["kind"] for r in records(ledger, "job_1")][-2:] == ["archived", "job"]

    def test_heartbeat_extends_and_reports_lost_jobs(self, ledger, other):
        worker = new_worker_id()
        ledger.register_worker(worker)
        assert ledger.claim(job(1), worker.id, -1.0, max_lost=MAX_LOST).ok
        assert ledger.claim(job(2), worker.id, -1.0, max_lost=MAX_LOST).ok
        assert other.claim(job(2), "thief", TTL, max_lost=MAX_LOST).ok  # 2 had run out
        assert ledger.heartbeat(worker.id, TTL) == {"job_1"}
        assert row(ledger, "job_1").lease_until > time.time() + TTL / 2
        assert other.claim(job(1), "thief", TTL, max_lost=MAX_LOST).reason == "held"
        (w,) = [w for w in ledger.workers() if w.worker_id == worker.id]
        assert isinstance(w, WorkerRow) and w.jobs == ("job_1",) and w.pid == worker.pid

    def test_release_and_unregister(self, ledger):
        worker = new_worker_id()
        ledger.register_worker(worker)
        assert ledger.claim(job(1), worker.id, TTL, max_lost=MAX_LOST).ok
        assert ledger.claim(job(2), worker.id, TTL, max_lost=MAX_LOST).ok
        assert ledger.release("job_1", "someone else") is False
        assert ledger.release("job_1", worker.id) is True
        r = row(ledger, "job_1")
        assert (r.owner, r.lease_until, r.state, r.lost_leases) == (None, None, QUEUED, 0)
        ledger.unregister_worker(worker.id)
        assert row(ledger, "job_2").owner is None
        assert worker.id not in {w.worker_id for w in ledger.workers()}
        got = ledger.claim(job(2), "w2", TTL, max_lost=MAX_LOST)
        assert got.ok and got.lost_leases == 0  # released, not lost

    def test_enqueue(self, ledger):
        ledger.record_job(job(1, "processing"), WAITING)
        ledger.record_job(job(2), ARCHIVED)
        ledger.record_job(job(3), INCOMPLETE, "failed")
        assert ledger.enqueue([job(1), job(2), job(3), job(4)]) == 3
        assert ledger.job_states() == {"job_1": QUEUED, "job_2": ARCHIVED,
                                       "job_3": INCOMPLETE, "job_4": QUEUED}
        assert row(ledger, "job_1").status == "completed"  # refreshed
        assert row(ledger, "job_3").error == "failed"
        assert ledger.enqueue([]) == 0
        chain_ok(ledger)

    def test_dead_workers(self, ledger, other):
        worker = new_worker_id()
        ledger.register_worker(worker)
        assert ledger.claim(job(1), worker.id, TTL, max_lost=MAX_LOST).ok
        (lease,) = ledger.lease_rows(["job_1"])
        assert lease.owner == worker.id and lease.owner_alive
        assert ledger.expire_worker(worker.id) == 1
        (lease,) = ledger.lease_rows(["job_1"])
        assert not lease.owner_alive and lease.lease_until < time.time()
        got = other.claim(job(1), "w2", TTL, max_lost=MAX_LOST)
        assert got.ok and got.lost_leases == 1
        ledger.register_worker(worker)
        time.sleep(0.01)
        assert ledger.forget_dead_workers(0.0) == [worker.id]
        assert ledger.workers() == []
        assert ledger.heartbeat(worker.id, TTL) == set()  # alive after all: back in the list
        assert [w.worker_id for w in ledger.workers()] == [worker.id]

    def test_schema_info(self, ledger):
        info = ledger.schema_info()
        assert info["version"] == info["known_version"] >= 2 and info["pending"] == []
        assert all(len(m["sha256"]) == 64 for m in info["migrations"])
        assert info["backend"] and info["location"] and "@" not in info["location"]


def _open(target: str):
    if "://" in target:
        return open_ledger(SimpleNamespace(state_dir=".", ledger=SimpleNamespace(url=target)))
    return open_ledger(target)


def claim_worker(target: str, start_at: float, deadline: float, work: float = 0.001) -> dict:
    """One process of the multi-process test: claim with ``claim_next`` and finish with
    ``finish_job`` until nothing is left (or ``deadline``); ``target`` is a state_dir or a
    ledger URL. Returns what this process finished and how many fences it hit."""
    ledger = _open(target)
    worker = new_worker_id()
    ledger.register_worker(worker)
    done, lost = [], 0
    time.sleep(max(0.0, start_at - time.time()))  # everybody starts together
    try:
        while time.time() < deadline:
            got = ledger.claim_next(worker.id, TTL, max_lost=MAX_LOST)
            if got is None:
                break
            time.sleep(work)  # the archiving, outside any transaction
            try:
                ledger.finish_job(got.job(), worker.id, ARCHIVED)
                done.append(got.job_id)
            except LeaseLost:
                lost += 1
    finally:
        ledger.unregister_worker(worker.id)
        ledger.close()
    return {"worker": worker.id, "done": done, "lost": lost}
