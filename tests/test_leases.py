"""archiver.leases: claims kept by one heartbeat per process, loss detection, self-fencing
and the fenced finish, on a real SQLite ledger shared by two handles (two processes)."""

from __future__ import annotations

import time

import pytest

from archiver.config import LeaseSettings
from archiver.errors import LeaseLost
from archiver.leases import Heartbeat, JobLease
from archiver.ledger import ARCHIVED, INCOMPLETE, QUEUED, new_worker_id, open_ledger
from archiver.model import Job

SETTINGS = LeaseSettings(ttl=3, heartbeat=1)  # self_fence 2.25 s


def job(n: int = 1) -> Job:
    return Job(f"job_{n}", "proj", "completed", {"id": f"job_{n}", "projectId": "proj",
                                                  "status": "completed"})


@pytest.fixture
def ledgers(tmp_path):
    """Two handles on one ledger file: this worker's, and another process's."""
    mine, other = open_ledger(tmp_path), open_ledger(tmp_path)
    yield mine, other
    mine.close()
    other.close()


def heartbeat(ledger, settings=SETTINGS) -> Heartbeat:
    """A registered heartbeat whose beats the test drives itself (no thread)."""
    hb = Heartbeat(ledger, new_worker_id(), settings)
    ledger.register_worker(hb.worker)
    return hb


def archive(hb: Heartbeat, lease: JobLease, j: Job) -> None:
    """What jobwork does at the end of a job: the fenced state and its event together."""
    with hb.ledger.batch():
        lease.finish(j, ARCHIVED)
        hb.ledger.event("archived", "4 objects in 1 sinks", job_id=j.id)


def test_a_beat_extends_every_lease_held(ledgers):
    mine, _ = ledgers
    hb = heartbeat(mine)
    leases = [hb.claim(job(1)), hb.claim(job(2))]
    assert all(isinstance(x, JobLease) for x in leases) and sorted(hb.held) == \
        ["job_1", "job_2"]
    before = {r.job_id: r.lease_until for r in mine.job_rows()}
    time.sleep(0.05)
    hb.beat()
    after = {r.job_id: r.lease_until for r in mine.job_rows()}
    assert all(after[j] > before[j] for j in before)
    assert not any(x.lost.is_set() for x in leases) and not hb.fenced.is_set()


def test_a_lease_taken_over_is_marked_lost_at_the_next_beat(ledgers):
    mine, other = ledgers
    hb = heartbeat(mine)
    lost, kept = hb.claim(job(1)), hb.claim(job(2))
    # Another process ended this worker's leases (a supervisor that saw it as dead) and
    # took job_1; this process's heartbeats never failed, so only the answer tells.
    assert other.expire_worker(hb.worker.id) == 2
    taken = other.claim(job(1), "host-b:1:beef", 60, max_lost=3)
    assert taken.ok and taken.lost_leases == 1
    hb.beat()
    assert lost.lost.is_set() and "another worker took the job over" in lost.reason
    assert not kept.lost.is_set()  # nobody took job_2: the beat renewed it
    assert mine.job_rows("job_2")[0].lease_until > time.time()


def test_finish_after_the_loss_raises_and_writes_no_archived(ledgers):
    mine, other = ledgers
    hb = heartbeat(mine)
    lease = hb.claim(job(1))
    other.expire_worker(hb.worker.id)
    assert other.claim(job(1), "host-b:1:beef", 60, max_lost=3).ok
    hb.beat()
    assert lease.lost.is_set()
    with pytest.raises(LeaseLost, match="lease lost to host-b:1:beef"):
        archive(hb, lease, job(1))
    assert hb.held == []  # finished or not, this process no longer tracks it
    (row,) = mine.job_rows("job_1")
    assert (row.state, row.owner) == (QUEUED, "host-b:1:beef")
    assert not [e for e in mine.event_rows("job_1") if e.kind == "archived"]
    # the new owner's finish goes through
    other.finish_job(job(1), "host-b:1:beef", ARCHIVED)
    assert mine.job_rows("job_1")[0].state == ARCHIVED


def test_finish_while_held_is_recorded_with_its_event(ledgers):
    mine, _ = ledgers
    hb = heartbeat(mine)
    archive(hb, hb.claim(job(1)), job(1))
    (row,) = mine.job_rows("job_1")
    assert (row.state, row.owner) == (ARCHIVED, None) and hb.held == []
    assert [e.kind for e in mine.event_rows("job_1")] == ["archived"]


def test_self_fence_after_a_pause(ledgers):
    """A process paused (SIGSTOP, a VM pause) longer than lease.self_fence marks every
    lease lost at its first beat, before it writes anything else, even though the ledger
    answers: another worker may own those jobs by now."""
    mine, _ = ledgers
    hb = heartbeat(mine)
    leases = [hb.claim(job(1)), hb.claim(job(2))]
    hb.last_ok -= SETTINGS.effective_self_fence + 1  # the monotonic clock jumped ahead
    hb.beat()
    assert all(x.lost.is_set() for x in leases)
    assert all("lease.self_fence 2.25s" in x.reason for x in leases)
    # the ledger answered, so the heartbeat itself is healthy again
    assert not hb.fenced.is_set() and time.monotonic() - hb.last_ok < 1


def test_a_short_pause_does_not_fence(ledgers):
    mine, _ = ledgers
    hb = heartbeat(mine)
    lease = hb.claim(job(1))
    hb.last_ok -= SETTINGS.effective_self_fence - 1
    hb.beat()
    assert not lease.lost.is_set()


def test_self_fence_when_heartbeats_keep_failing(tmp_path):
    led = open_ledger(tmp_path)
    hb = heartbeat(led)
    lease = hb.claim(job(1))
    led.close()  # the ledger is unreachable from now on
    hb.beat()
    assert not lease.lost.is_set()  # one failed beat: not yet
    hb.last_ok -= SETTINGS.effective_self_fence + 1
    hb.beat()
    assert lease.lost.is_set() and hb.fenced.is_set()


def test_release_and_close_give_jobs_back(ledgers):
    mine, other = ledgers
    hb = Heartbeat(mine, new_worker_id(), SETTINGS).start()
    try:
        first, second = hb.claim(job(1)), hb.claim(job(2))
        assert other.claim(job(1), "w-other", 60, max_lost=3).reason == "held"
        hb.release(first)
        assert other.claim(job(1), "w-other", 60, max_lost=3).ok
        assert hb.held == ["job_2"] and not second.lost.is_set()
    finally:
        hb.close()
    # closing released job_2 (and unregistered the worker): claimable at once, no loss
    got = other.claim(job(2), "w-other", 60, max_lost=3)
    assert got.ok and got.lost_leases == 0
    assert hb.worker.id not in [w.worker_id for w in other.workers()]


def test_claims_refused_are_handed_back(ledgers):
    mine, other = ledgers
    hb = heartbeat(mine)
    assert other.claim(job(1), "w-other", 60, max_lost=3).ok
    refused = hb.claim(job(1))
    assert not isinstance(refused, JobLease) and refused.reason == "held"
    assert refused.holder == "w-other" and hb.held == []
    other.finish_job(job(1), "w-other", INCOMPLETE, "boom", not_before=time.time() + 60)
    assert hb.claim(job(1)).reason == "backoff"
    assert isinstance(hb.claim(job(1), ignore_backoff=True), JobLease)


def test_a_claim_made_while_a_beat_runs_is_not_lost(ledgers):
    """A job claimed after the beat's ledger statement read the held jobs, but before
    the beat compared, is not in that answer and was not taken over (seen with four
    Celery worker processes on two cores: a job aborted, nobody else held it)."""
    mine, _ = ledgers
    hb = heartbeat(mine)
    early = hb.claim(job(1))
    late: list[JobLease] = []
    real = mine.heartbeat

    def slow_statement(worker_id, ttl):
        answer = real(worker_id, ttl)     # what the ledger held when it ran
        late.append(hb.claim(job(2)))     # another thread claims meanwhile
        return answer

    mine.heartbeat = slow_statement
    try:
        hb.beat()
    finally:
        mine.heartbeat = real
    assert isinstance(late[0], JobLease)
    assert not late[0].lost.is_set() and not early.lost.is_set()
    hb.beat()  # the next beat sees both
    assert not late[0].lost.is_set() and sorted(hb.held) == ["job_1", "job_2"]
