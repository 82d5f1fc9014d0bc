"""archiver.jobwork: settle (what needs no work) and archive_job (a job under a lease,
ending in a fenced finish). In-process, the emulator over HTTP, a real SQLite ledger and
a second ledger handle playing the other worker."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from archiver.config import load_config
from archiver.hookspecs import hookimpl
from archiver.jobwork import LEASE_LOST, JobOutcome, archive_job, backoff_delay, settle
from archiver.leases import Heartbeat
from archiver.ledger import (ARCHIVED, INCOMPLETE, LOST, NOTHING, QUEUED, WAITING,
                             new_worker_id, open_ledger)
from archiver.plugins import build_plugin_manager
from archiver.runtime import Runtime
from archiver.testing.configs import basic_config
from archiver.testing.emulator import ArtifactSpec


class Done:
    def __init__(self):
        self.jobs: list[tuple[str, str]] = []

    @hookimpl
    def archiver_job_done(self, job, state, results):
        self.jobs.append((job.id, state))


@pytest.fixture
def done():
    return Done()


@pytest.fixture
def rt(emu, tmp_path, done):
    emu.add_project(project_id="proj_j", name="J")
    plugins = build_plugin_manager(entry_points=False, extra=[("done", done)])
    text = basic_config(emu, tmp_path, top="lease: {ttl: 3s, heartbeat: 1s}\n"
                                           "watch: {retry_max_delay: 100s}\n")
    loaded = load_config("a.yaml", plugins.registry, text=text,
                         env={"PLANGREP_API_KEY": emu.api_key})
    runtime = Runtime(loaded, plugins, open_ledger(loaded.settings.state_dir))
    runtime.worker = new_worker_id()
    yield runtime
    runtime.close()
    runtime.ledger.close()


@pytest.fixture
def hb(rt):
    beat = Heartbeat(rt.ledger, rt.worker, rt.settings.lease)
    rt.ledger.register_worker(rt.worker)  # beats are driven by the tests
    return beat


@pytest.fixture
def pool():
    with ThreadPoolExecutor(2) as p:
        yield p


def add(emu, status="completed", **kw):
    artifacts = kw.pop("artifacts", [ArtifactSpec("a.json", 500, where="document"),
                                     ArtifactSpec("b.bin", 3000, where="result")])
    return emu.add_job("proj_j", status=status, artifacts=artifacts, **kw)["id"]


def kinds(rt, job_id):
    return [e.kind for e in rt.ledger.event_rows(job_id)]


# --------------------------------------------------------------------------- settle
def test_settle_records_what_needs_no_work(emu, rt, done):
    running, failed = add(emu, "processing"), add(emu, "failed")
    job = rt.source.get_job(running)
    assert settle(rt, job, None).state == WAITING
    assert rt.ledger.job_states()[running] == WAITING
    before = rt.ledger.job_rows(running)[0].updated
    assert settle(rt, job, WAITING).state == WAITING  # already waiting: not rewritten
    assert rt.ledger.job_rows(running)[0].updated == before
    assert settle(rt, rt.source.get_job(failed), None).state == NOTHING
    assert rt.ledger.job_states()[failed] == NOTHING and done.jobs == [(failed, NOTHING)]


def test_settle_loses_a_job_that_expired_while_queued(emu, rt, done):
    job_id = add(emu)
    rt.ledger.enqueue([rt.source.get_job(job_id)])
    emu.expire(job_id)
    (job,) = [j for j in rt.source.iter_jobs() if j.id == job_id]  # as a listing shows it
    out = settle(rt, job, QUEUED)
    assert out.state == LOST and "expired before it was archived" in out.message
    assert rt.ledger.job_states()[job_id] == LOST and kinds(rt, job_id) == ["lost"]


def test_settle_leaves_jobs_to_archive_and_notes_the_first_sighting(emu, rt):
    job_id = add(emu)
    job = rt.source.get_job(job_id)
    assert settle(rt, job, None) is None
    assert settle(rt, job, INCOMPLETE) is None
    assert kinds(rt, job_id) == ["discovered"]  # once, not at every look


# --------------------------------------------------------------------------- archive_job
def test_archive_job_under_a_lease(emu, rt, hb, pool, done):
    job_id = add(emu)
    job = rt.source.get_job(job_id)
    lease = hb.claim(job)
    out = archive_job(rt, job, pool, lease)
    assert out.state == ARCHIVED and out.objects == 4 and out.objects_written == 4
    (row,) = rt.ledger.job_rows(job_id)
    assert (row.state, row.owner, row.attempts) == (ARCHIVED, None, 1)
    assert kinds(rt, job_id).count("archived") == 1 and hb.held == []
    assert done.jobs == [(job_id, ARCHIVED)]


def test_a_lease_taken_over_mid_job_ends_in_lease_lost(emu, rt, hb, pool, done, tmp_path):
    """The heartbeat has not noticed yet: the job's objects are stored, but its final
    record is fenced: the finish is refused, nothing of it is written, the new owner
    records the job."""
    job_id = add(emu)
    job = rt.source.get_job(job_id)
    lease = hb.claim(job)
    other = open_ledger(tmp_path / "state")
    try:
        other.expire_worker(rt.worker.id)   # seen dead by a supervisor ...
        assert other.claim(job, "host-b:1:beef", 60, max_lost=3).ok  # ... and taken over
        out = archive_job(rt, job, pool, lease)
        assert out.state == LEASE_LOST and "lease lost to host-b:1:beef" in out.message
        (row,) = rt.ledger.job_rows(job_id)
        assert (row.state, row.owner) == (QUEUED, "host-b:1:beef")
        assert "archived" not in kinds(rt, job_id) and done.jobs == []
        assert not list((tmp_path / "archive").rglob("*.partial"))
    finally:
        other.close()


def test_a_lost_lease_aborts_the_writers(emu, rt, hb, pool):
    job_id = add(emu, artifacts=[ArtifactSpec("big.bin", 4 << 20, where="document")])
    job = rt.source.get_job(job_id)
    lease = hb.claim(job)
    lease.mark_lost("lease lost: another worker took the job over")
    out = archive_job(rt, job, pool, lease)
    # nobody else took it here, so its incomplete state is recorded (fenced, and ours)
    assert out.state == INCOMPLETE
    assert any("another worker took the job over" in p for p in out.problems)
    assert rt.ledger.job_states()[job_id] == INCOMPLETE
    assert not rt.ledger.list_pending() and not rt.ledger.copies(job_id)


def test_an_incomplete_job_backs_off(emu, rt, hb, pool):
    job_id = add(emu)
    job = rt.source.get_job(job_id)
    emu.faults.error_5xx_n = 1000  # from now on the result cannot be read
    lease = hb.claim(job)
    start = time.time()
    out = archive_job(rt, job, pool, lease, backoff=10)
    emu.faults.error_5xx_n = 0
    assert out.state == INCOMPLETE and out.problems
    (row,) = rt.ledger.job_rows(job_id)
    assert row.state == INCOMPLETE and row.owner is None
    assert start + 10 <= row.not_before <= time.time() + 10
    assert hb.claim(job).reason == "backoff"


def test_backoff_delay_doubles_up_to_the_cap(rt):
    assert [backoff_delay(rt, 10, n) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 80, 100]


def test_outcome_round_trips_and_ignores_unknown_fields():
    out = JobOutcome("job_1", ARCHIVED, objects=4, bytes_received=10)
    data = {**out.as_dict(), "from_a_newer_worker": 1}
    assert JobOutcome.from_dict(data) == out
