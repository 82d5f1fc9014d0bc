"""The fleet part of the ledger contract (schema 3): the queue as a dispatcher reads it,
named leases and shared token buckets.

:class:`FleetContract` is a base of :class:`archiver.testing.ledger_contract.LedgerContract`,
so every backend running the contract runs these too (a module of its own to keep the
contract's modules short). :func:`lease_racer` is the body of the multi-process lease test
(a state_dir or a ledger URL), for backends to run with ``multiprocessing``.
"""

from __future__ import annotations

import threading
import time

import pytest

from ..ledger import ARCHIVED, INCOMPLETE, new_worker_id

TTL, MAX_LOST = 60.0, 3


def _job(i, *args, **kw):
    from .ledger_contract import job  # the contract's job factory (imported late: a cycle)
    return job(i, *args, **kw)


class FleetContract:
    """Contract cases of the fleet methods (see the module docstring)."""

    # ------------------------------------------------------------------ the queue
    def test_dispatchable_queued_job_and_queue_stats(self, ledger):
        stats = ledger.queue_stats()
        assert stats == {"queued": 0, "leased": 0, "parked": 0, "claims_total": 0,
                         "oldest_queued_seconds": None}
        early, late = "2030-01-01T00:00:00Z", "2031-06-01T00:00:00Z"
        ledger.enqueue([_job("c", expires=None), _job("b", expires=late),
                        _job("a", expires=early), _job("held"), _job("back"), _job("lapsed")])
        ledger.record_job(_job("done"), ARCHIVED)
        assert ledger.claim(_job("held"), "w", TTL, max_lost=MAX_LOST).ok
        assert ledger.claim(_job("back"), "w", TTL, max_lost=MAX_LOST).ok
        ledger.finish_job(_job("back"), "w", INCOMPLETE, "failed", not_before=time.time() + 3600)
        assert ledger.claim(_job("lapsed"), "gone", -1.0, max_lost=MAX_LOST).ok
        for n in range(MAX_LOST):
            assert ledger.claim(_job("parked"), f"p{n}", -1.0, max_lost=MAX_LOST).ok
        assert ledger.claim(_job("parked"), "px", TTL, max_lost=MAX_LOST).reason == "parked"
        default = _job("lapsed").raw["expiresAt"]  # 2031-01-01: between early and late
        assert ledger.dispatchable(10) == [("job_a", early), ("job_lapsed", default),
                                           ("job_b", late), ("job_c", None)]
        assert ledger.dispatchable(2) == [("job_a", early), ("job_lapsed", default)]
        assert ledger.dispatchable(0) == []
        got = ledger.claim_next("w2", TTL, max_lost=MAX_LOST)  # the same rules
        assert got.job_id == "job_a"
        assert [j for j, _ in ledger.dispatchable(10)] == ["job_lapsed", "job_b", "job_c"]
        stats = ledger.queue_stats()
        oldest = stats.pop("oldest_queued_seconds")
        # queued: lapsed, b, c and back (in backoff); leased: held, a; claims: held, back,
        # lapsed, a and the three of parked before it was parked
        assert stats == {"queued": 4, "leased": 2, "parked": 1, "claims_total": 7}
        assert oldest is not None and 0 <= oldest < 600

    def test_queued_job(self, ledger):
        ledger.enqueue([_job(1, expires=None, project="p9")])
        got = ledger.queued_job("job_1")
        assert got == _job(1, expires=None, project="p9") and got.raw["projectId"] == "p9"
        assert ledger.queued_job("job_nope") is None
        ledger.record_job(_job(2, "processing"), "waiting")
        assert ledger.queued_job("job_2").status == "processing"

    def test_workers_report_their_leases(self, ledger):
        worker = new_worker_id()
        ledger.register_worker(worker)
        assert ledger.claim(_job(1), worker.id, TTL, max_lost=MAX_LOST).ok
        (w,) = [w for w in ledger.workers() if w.worker_id == worker.id]
        ((job_id, until),) = w.leases
        assert w.jobs == ("job_1",) and job_id == "job_1" and until > time.time() + TTL / 2

    # ------------------------------------------------------------------ named leases
    def test_named_lease_take_renew_refuse_take_over_drop(self, ledger, other):
        assert ledger.lease_holder("leader") is None
        assert ledger.take_lease("leader", "a", TTL)
        assert not other.take_lease("leader", "b", TTL)  # a's lease is live
        owner, left = other.lease_holder("leader")
        assert owner == "a" and TTL - 5 < left <= TTL
        assert ledger.take_lease("leader", "a", TTL)  # renewed by its owner
        other.drop_lease("leader", "b")  # not b's to drop
        assert ledger.lease_holder("leader")[0] == "a"
        assert ledger.take_lease("leader", "a", -1.0)  # renewed to run out at once
        assert ledger.lease_holder("leader") is None
        assert other.take_lease("leader", "b", TTL)  # taken over: a's ran out
        assert not ledger.take_lease("leader", "a", TTL)
        other.drop_lease("leader", "b")
        assert ledger.lease_holder("leader") is None
        assert ledger.take_lease("leader", "a", TTL)
        assert ledger.lease_holder("another") is None
        with pytest.raises(RuntimeError), ledger.batch():
            ledger.take_lease("leader", "a", TTL)  # its answer is needed: not in a batch

    def test_one_lease_holder_among_threads_on_four_handles(self, ledger, reopen):
        handles = [ledger] + [reopen() for _ in range(3)]
        try:
            for rnd in range(6):
                name = f"leader-{rnd}"
                if rnd % 2:  # a lapsed holder: everybody races to take it over
                    assert ledger.take_lease(name, "old", -1.0)
                start, results = threading.Barrier(8), []

                def race(handle, who, name=name, start=start, results=results):
                    start.wait()
                    results.append((who, handle.take_lease(name, who, TTL)))

                threads = [threading.Thread(target=race, args=(handles[i % 4], f"w{i}"))
                           for i in range(8)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                winners = [who for who, ok in results if ok]
                assert len(results) == 8 and len(winners) == 1, (rnd, results)
                assert ledger.lease_holder(name)[0] == winners[0]
        finally:
            for handle in handles[1:]:
                handle.close()

    # ------------------------------------------------------------------ token buckets
    def test_token_bucket_is_shared_and_refills(self, ledger, other):
        assert ledger.take_tokens("api", 3, 10.0, 5) == (3, 0.0)  # a new bucket is full
        got, wait = other.take_tokens("api", 5, 10.0, 5)
        assert got == 2 and 0 < wait <= 0.1 + 1e-6  # the next token in 1/rate at most
        assert ledger.take_tokens("api", 0, 10.0, 5) == (0, 0.0)
        assert ledger.take_tokens("fast", 100, 1000.0, 4)[0] == 4
        time.sleep(0.05)  # 50 tokens' worth of refill, capped at the burst
        assert other.take_tokens("fast", 100, 1000.0, 4)[0] == 4
        time.sleep(0.3)
        got, _ = ledger.take_tokens("api", 10, 10.0, 5)
        assert 2 <= got <= 5
        for bad in ({"rate": 0.0}, {"burst": 0.5}, {"want": -1}):
            args = {"want": 1, "rate": 10.0, "burst": 5, **bad}
            with pytest.raises(ValueError):
                ledger.take_tokens("api", args["want"], args["rate"], args["burst"])

    def test_pause_tokens_stops_every_taker(self, ledger, other):
        assert ledger.take_tokens("api", 1, 100.0, 10)[0] == 1
        other.pause_tokens("api", 1.0)
        got, wait = ledger.take_tokens("api", 1, 100.0, 10)
        assert got == 0 and 0.5 < wait <= 1.0
        ledger.pause_tokens("api", 0.1)  # a shorter pause keeps the longer one
        assert ledger.take_tokens("api", 1, 100.0, 10)[1] > 0.5
        other.pause_tokens("new", 0.3)  # an unknown bucket is made, paused
        got, wait = ledger.take_tokens("new", 1, 100.0, 10)
        assert got == 0 and 0.1 < wait <= 0.3
        time.sleep(wait + 0.06)
        got, _ = ledger.take_tokens("new", 100, 100.0, 10)
        assert 1 <= got < 10  # refilled from the end of the pause, not a full burst


def lease_racer(target: str, start_at: float, rounds: int) -> list[bool]:
    """One process of the multi-process lease test: at ``start_at + 0.3 * r`` it tries to
    take lease ``leader-r`` (r < ``rounds``); what it got each round."""
    from .ledger_contract import _open
    ledger = _open(target)
    me = new_worker_id().id
    got = []
    try:
        for rnd in range(rounds):
            time.sleep(max(0.0, start_at + 0.3 * rnd - time.time()))
            got.append(ledger.take_lease(f"leader-{rnd}", me, TTL))
    finally:
        ledger.close()
    return got
