"""archiver.executors: one pass (run_pass) on the thread executor, holding a lease on each
job, and the report's outcomes and exit codes. In-process, the emulator over HTTP, a
real SQLite ledger; a second ledger handle plays another process."""

from __future__ import annotations

import pytest

from archiver.config import load_config
from archiver.executors import RunReport, ThreadExecutor, refusal_outcome, run_pass
from archiver.jobwork import BACKOFF, BUSY, LEASE_LOST, PARKED, SKIPPED, JobOutcome
from archiver.ledger import (ARCHIVED, INCOMPLETE, LOST, NOTHING, WAITING, ClaimRefused,
                             open_ledger)
from archiver.model import Job
from archiver.plugins import build_plugin_manager
from archiver.runtime import Runtime
from archiver.testing.configs import basic_config
from archiver.testing.emulator import ArtifactSpec


@pytest.fixture
def rt(emu, tmp_path):
    emu.add_project(project_id="proj_e", name="E")
    plugins = build_plugin_manager(entry_points=False)
    text = basic_config(emu, tmp_path, top="lease: {ttl: 3s, heartbeat: 1s}\n")
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


def add(emu, n: int) -> list[str]:
    return [emu.add_job("proj_e", artifacts=[ArtifactSpec(f"x{i}.bin", 1000 + i,
                                                          where="document")])["id"]
            for i in range(n)]


def test_outcomes_and_exit_codes():
    r = RunReport()
    for state in (ARCHIVED, NOTHING, WAITING, SKIPPED, BACKOFF):
        r.add(JobOutcome(f"j-{state}", state))
    r.add(JobOutcome("j-busy", BUSY, message="held by w2"))
    r.add(JobOutcome("j-lost-lease", LEASE_LOST, message="job j: lease lost to w3"))
    assert r.exit_code == 0  # held elsewhere is not a failure of this run
    assert r.busy == {"j-busy": "held by w2", "j-lost-lease": "job j: lease lost to w3"}
    r.add(JobOutcome("j-parked", PARKED, message="parked after 3 lost leases"))
    assert r.exit_code == 1 and r.as_dict()["parked"] == {"j-parked":
                                                          "parked after 3 lost leases"}
    r.add(JobOutcome("j-lost", LOST, message="expired"))
    assert r.exit_code == 4
    r.add(JobOutcome("", "fatal", fatal="401"))
    assert r.exit_code == 3 and r.auth_refused
    r.interrupted = True
    assert r.exit_code == 130
    assert (r.skipped, r.backoff, r.waiting) == (1, ["j-backoff"], ["j-waiting"])


def test_refusals():
    j = Job("job_1", "p", "completed")
    assert refusal_outcome(j, ClaimRefused("held", "host:1:ab")).message == "held by host:1:ab"
    assert refusal_outcome(j, ClaimRefused("held")).state == BUSY
    parked = refusal_outcome(j, ClaimRefused("parked"))
    assert parked.state == PARKED and "`archiver archive job_1` retries it" in parked.message
    assert refusal_outcome(j, ClaimRefused("backoff")).state == BACKOFF
    assert refusal_outcome(j, ClaimRefused("settled")).state == SKIPPED


def test_a_pass_leaves_a_job_held_elsewhere_alone(emu, rt, other):
    held, *free = add(emu, 3)
    assert other.claim(rt.source.get_job(held), "host-b:1:beef", 60, max_lost=3).ok
    with ThreadExecutor(rt) as ex:
        report = run_pass(rt, ex)
        assert rt.worker_id in [w.worker_id for w in other.workers()]  # registered
    assert sorted(report.archived) == sorted(free)
    assert report.busy == {held: "held by host-b:1:beef"} and report.exit_code == 0
    # neither its result nor its artifacts were read
    assert not [r for r in emu.requests.snapshot()
                if r.route in ("result", "artifact") and held in r.path]
    assert other.job_rows(held)[0].owner == "host-b:1:beef"
    assert rt.worker_id not in [w.worker_id for w in other.workers()]  # unregistered


def test_a_pass_claims_every_job_it_archives(emu, rt, other):
    ids = add(emu, 2)
    with ThreadExecutor(rt) as ex:
        report = run_pass(rt, ex)
    assert sorted(report.archived) == sorted(ids)
    for job_id in ids:
        (row,) = other.job_rows(job_id)
        assert (row.state, row.owner, row.attempts) == (ARCHIVED, None, 1)


def test_a_named_job_is_claimed_by_force(emu, rt, other):
    """``archiver archive JOB`` un-parks a parked job."""
    (job_id,) = add(emu, 1)
    job = rt.source.get_job(job_id)
    for worker in ("w1", "w2", "w3"):
        other.claim(job, worker, -1, max_lost=3)  # leases that ran out at once
    assert other.claim(job, "w4", 60, max_lost=3).reason == "parked"
    with ThreadExecutor(rt) as ex:
        listed = run_pass(rt, ex)
        assert list(listed.parked) == [job_id] and listed.exit_code == 1
        assert f"`archiver archive {job_id}` retries it" in listed.parked[job_id]
        report = run_pass(rt, ex, job_ids=[job_id])
    assert report.archived == [job_id] and not other.job_rows(job_id)[0].parked


def test_a_draining_executor_gives_queued_jobs_back(emu, rt, other):
    (job_id,) = add(emu, 1)
    job = rt.source.get_job(job_id)
    with ThreadExecutor(rt) as ex:
        lease = ex.heartbeat.claim(job)
        rt.request_drain()
        out = ex._work(job, lease)
    assert out.state == INCOMPLETE and "not started, shutting down" in out.problems[0]
    (row,) = other.job_rows(job_id)
    assert row.owner is None and row.state != ARCHIVED
    assert other.claim(job, "w-next", 60, max_lost=3).lost_leases == 0  # released, not lost
