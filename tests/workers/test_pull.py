"""archiver.workers.pull: the pull loop of ``archiver worker``, run in this process on a
queue in a real SQLite ledger (jobs enqueued through the ledger API, read from the
emulator); a second ledger handle plays the other processes."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from archiver.config import load_config
from archiver.ledger import ARCHIVED, INCOMPLETE, Claim, open_ledger
from archiver.model import Job
from archiver.plugins import build_plugin_manager
from archiver.runtime import Runtime
from archiver.testing.configs import basic_config
from archiver.testing.emulator import ArtifactSpec
from archiver.workers.pull import PullWorker, claimed_job


@pytest.fixture
def rt(emu, tmp_path):
    emu.add_project(project_id="proj_p", name="P")
    plugins = build_plugin_manager(entry_points=False)
    text = basic_config(emu, tmp_path, top="lease: {ttl: 3s, heartbeat: 1s}\n")
    text = text.replace("concurrency: 4", "concurrency: 1")  # one job at a time: an order
    loaded = load_config("a.yaml", plugins.registry, text=text,
                         env={"PLANGREP_API_KEY": emu.api_key})
    runtime = Runtime(loaded, plugins, open_ledger(loaded.settings.state_dir))
    yield runtime
    runtime.close()
    runtime.ledger.close()


@pytest.fixture
def other(tmp_path):
    led = open_ledger(tmp_path / "state")
    yield led
    led.close()


def enqueue(emu, led, expiring_in_hours: list[int]) -> list[str]:
    now = datetime.now(timezone.utc)
    ids = [emu.add_job("proj_p", artifacts=[ArtifactSpec("x.bin", 100, where="document")],
                       created_at=now - timedelta(hours=1),
                       expires_at=now + timedelta(hours=h))["id"] for h in expiring_in_hours]
    jobs = [emu.job(i) for i in ids]
    led.enqueue(Job(j["id"], j["projectId"], j["status"], j) for j in jobs)
    return ids


def test_drain_claims_soonest_expiry_first_and_stops_when_empty(emu, rt, other):
    ids = enqueue(emu, other, [30, 5, 90, 1])
    events: list[dict] = []
    report = PullWorker(rt, drain=True, emit=events.append).run()
    assert sorted(report.archived) == sorted(ids) and report.exit_code == 0
    order = [e["job_id"] for e in events if e["type"] == "outcome"]
    assert order == [ids[3], ids[1], ids[0], ids[2]]
    assert all(e["state"] == ARCHIVED for e in events if e["type"] == "outcome")
    assert all(other.job_states()[i] == ARCHIVED for i in ids)
    assert not report.interrupted


def test_drain_tries_each_job_once_per_pass(emu, rt, other):
    """``since``: a job that ended incomplete in this pass is not retried by it."""
    (job_id,) = enqueue(emu, other, [5])
    since = time.time()
    claim = other.claim_next("host-b:1:beef", 60, max_lost=3, claimed_before=since)
    other.finish_job(claimed_job(claim), "host-b:1:beef", INCOMPLETE, "a download failed")
    report = PullWorker(rt, drain=True, since=since).run()
    assert report.archived == [] and other.job_states()[job_id] == INCOMPLETE
    assert PullWorker(rt, drain=True).run().archived == [job_id]  # the next pass does


def test_drain_takes_over_a_dead_holders_job_claimed_in_this_pass(emu, rt, other):
    """The holder died mid-attempt (its leases expired by the supervisor): that attempt
    never ended, so this pass takes the job over although it was claimed since ``since``
    (the bug: such a job was left for the next run, and ``run --workers`` kept spawning
    workers that found nothing to claim)."""
    (job_id,) = enqueue(emu, other, [5])
    since = time.time()
    assert other.claim_next("host-b:1:beef", 60, max_lost=3, claimed_before=since)
    other.expire_worker("host-b:1:beef")
    report = PullWorker(rt, drain=True, since=since).run()
    assert report.archived == [job_id]
    (row,) = other.job_rows(job_id)
    assert (row.state, row.attempts) == (ARCHIVED, 2)
    assert [e.kind for e in other.event_rows(job_id)].count("archived") == 1


def test_a_live_lease_is_never_taken(emu, rt, other):
    (job_id,) = enqueue(emu, other, [5])
    assert other.claim_next("host-b:1:beef", 60, max_lost=3)
    report = PullWorker(rt, drain=True, since=time.time()).run()
    assert report.archived == [] and other.job_rows(job_id)[0].owner == "host-b:1:beef"


def test_long_lived_mode_honours_backoff_and_stops_on_drain(emu, rt, other):
    held_back, ready = enqueue(emu, other, [5, 6])
    claim = other.claim(Job(held_back, "proj_p", "completed", emu.job(held_back)),
                        "host-b:1:beef", 60, max_lost=3)
    other.finish_job(claimed_job(claim), "host-b:1:beef", INCOMPLETE, "failed",
                     not_before=time.time() + 3600)
    worker = PullWorker(rt, idle=0.05)
    thread = threading.Thread(target=lambda: setattr(worker, "out", worker.run()))
    thread.start()
    deadline = time.monotonic() + 20
    while other.job_states()[ready] != ARCHIVED and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a few more looks at the queue
    rt.request_drain()
    thread.join(10)
    assert not thread.is_alive()
    assert worker.out.archived == [ready] and worker.out.interrupted
    assert other.job_states()[held_back] == INCOMPLETE  # backing off: left alone


def test_claimed_job_decodes_the_stored_job():
    raw = '{"id": "job_1", "status": "completed", "expiresAt": "2030-01-01T00:00:00Z"}'
    job = claimed_job(Claim("job_1", "p", "completed", raw))
    assert (job.id, job.project_id, job.expires_at) == ("job_1", "p", "2030-01-01T00:00:00Z")
    assert claimed_job(Claim("job_2", "p", "completed", "")).raw == {}
