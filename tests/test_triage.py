"""archiver.triage.decide: the one decision run, watch, workers and dry runs share."""

from __future__ import annotations

import contextlib
import json
import re

import pytest

from archiver.ledger import ARCHIVED, INCOMPLETE, LOST, NOTHING, QUEUED, WAITING
from archiver.model import Job
from archiver.triage import ARCHIVE, LOSE, NOTHING_TO_STORE, SKIP, WAIT, decide


def job(status: str) -> Job:
    return Job("job_1", "proj", status, {"id": "job_1", "status": status})


@pytest.mark.parametrize("status, previous, action", [
    ("completed", None, ARCHIVE),
    ("completed_with_errors", None, ARCHIVE),
    ("completed", INCOMPLETE, ARCHIVE),
    ("completed", QUEUED, ARCHIVE),     # queued for workers, not archived yet
    ("completed", WAITING, ARCHIVE),
    ("running", None, WAIT),
    ("queued", WAITING, WAIT),
    ("failed", None, NOTHING_TO_STORE),
    ("cancelled", WAITING, NOTHING_TO_STORE),
    ("expired", None, NOTHING_TO_STORE),  # never seen with a result: nothing was lost
    ("expired", INCOMPLETE, LOSE),
    ("expired", WAITING, LOSE),
    ("expired", QUEUED, LOSE),          # expired while queued for the workers
    ("completed", ARCHIVED, SKIP),
    ("expired", ARCHIVED, SKIP),
    ("failed", NOTHING, SKIP),
    ("completed", LOST, SKIP),
])
def test_decide(status, previous, action):
    d = decide(job(status), previous)
    assert d.action == action, d
    assert d.needs_work == (action == ARCHIVE)


def test_reasons_name_the_state():
    assert decide(job("completed"), ARCHIVED).reason == "already archived"
    assert decide(job("running"), None).reason == "not finished (running)"
    assert decide(job("expired"), QUEUED).reason == "expired before it was archived"


def test_an_explicit_job_is_looked_at_again():
    """``archiver archive JOB``: a settled job is triaged as if new (stored copies are
    then skipped object by object)."""
    assert decide(job("completed"), ARCHIVED, explicit=True).action == ARCHIVE
    assert decide(job("failed"), NOTHING, explicit=True).action == NOTHING_TO_STORE


# --------------------------------------------------------------------------- expiry tells the
# truth: a completed job that expired before archiver first saw it is lost

def expired(raw: dict) -> Job:
    return Job("job_1", "proj", "expired", {"id": "job_1", "status": "expired", **raw})


@pytest.mark.parametrize("raw, action", [
    ({"completedAt": "2026-01-01T00:00:00Z"}, LOSE),
    ({"completedAt": "2026-01-01T00:00:00Z", "files": [{"status": "completed"}]}, LOSE),
    ({"statusHistory": [{"status": "processing"}, {"status": "completed"},
                        {"status": "expired"}]}, LOSE),
    ({"statusHistory": ["processing", "completed_with_errors", "expired"]}, LOSE),
    ({}, NOTHING_TO_STORE),                                   # never completed
    ({"completedAt": None}, NOTHING_TO_STORE),
    ({"completedAt": "2026-01-01T00:00:00Z",                  # failed, then expired
      "error": {"code": "processing_failed"}}, NOTHING_TO_STORE),
    ({"completedAt": "2026-01-01T00:00:00Z",                  # cancelled, then expired
      "files": [{"status": "cancelled"}]}, NOTHING_TO_STORE),
    ({"completedAt": "2026-01-01T00:00:00Z",                  # the history decides
      "statusHistory": [{"status": "processing"}, {"status": "failed"}]}, NOTHING_TO_STORE),
])
def test_an_expired_job_seen_first_is_lost_if_it_had_completed(raw, action):
    d = decide(expired(raw), None)
    assert d.action == action, d
    if action == LOSE:
        assert d.reason.startswith("expired before archiver first saw it")
    assert decide(expired(raw), NOTHING).action == SKIP  # settled stays settled


def _cli(emu, cfg, *args):
    from click.testing import CliRunner

    from archiver.cli import cli
    return CliRunner().invoke(cli, ["run", "-c", str(cfg), *args],
                              env={"PLANGREP_API_KEY": emu.api_key})


def _config(emu, tmp_path, top=""):
    from archiver.testing.configs import basic_config
    cfg = tmp_path / "a.yaml"
    cfg.write_text(basic_config(emu, tmp_path, top=top))
    return cfg


def test_run_reports_a_completed_job_that_expired_unseen_as_lost(emu, tmp_path):
    emu.add_project(project_id="proj_t", name="T")
    gone = emu.add_job("proj_t", status="expired")        # completed, then expired unseen
    assert gone["completedAt"]
    unfinished = emu.expire(emu.add_job("proj_t", status="processing")["id"])
    assert not unfinished["completedAt"]
    cfg = _config(emu, tmp_path)
    out = _cli(emu, cfg)
    assert out.exit_code == 4, out.output
    assert f"LOST {gone['id']}: job {gone['id']} expired before archiver first saw it" \
        in out.stderr
    data = json.loads(_cli(emu, cfg, "--json").stdout)   # settled: reported once
    assert data["lost"] == {} and data["exit_code"] == 0
    from archiver.ledger import open_ledger
    ledger = open_ledger(tmp_path / "state")
    try:
        assert ledger.job_states() == {gone["id"]: LOST, unfinished["id"]: NOTHING}
        assert [e["kind"] for e in ledger.events(gone["id"])] == ["lost"]
    finally:
        ledger.close()


def test_run_warns_about_open_jobs_near_expiry_as_watch_does(emu, tmp_path):
    from datetime import datetime, timedelta, timezone
    emu.add_project(project_id="proj_t", name="T")
    soon = emu.add_job("proj_t", status="processing",
                       expires_at=datetime.now(timezone.utc) + timedelta(hours=2))
    later = emu.add_job("proj_t", status="processing")    # expires in 7 days
    cfg = _config(emu, tmp_path)
    for _ in range(2):
        out = _cli(emu, cfg)
        assert out.exit_code == 0, out.output
        warnings = [ln for ln in out.stderr.splitlines() if "EXPIRY WARNING" in ln]
        assert len(warnings) == 1, out.stderr
        assert re.search(rf"job {soon['id']} \(waiting\) expires in (1h59m|2h00m) and is "
                         "not archived yet", warnings[0]), warnings
        assert later["id"] not in out.stderr
    from archiver.ledger import open_ledger
    ledger = open_ledger(tmp_path / "state")
    try:  # one expiry_warning event per job, as watch records it
        assert ledger.count_events("expiry_warning") == 1
        assert ledger.jobs_with_event("expiry_warning") == {soon["id"]}
    finally:
        ledger.close()
    quiet = _config(emu, tmp_path, top="watch: {expiry_warning: 0}\n")
    assert "EXPIRY WARNING" not in _cli(emu, quiet).stderr


# --------------------------------------------------------------------------- "discovered" once

def test_discovered_is_recorded_once_per_job_across_runs(emu, tmp_path):
    from archiver.testing.emulator import ArtifactSpec
    emu.add_project(project_id="proj_t", name="T")
    stuck = emu.add_job("proj_t", artifacts=[ArtifactSpec("a.bin", 2000)])
    emu.add_job("proj_t", status="processing")             # waiting all along
    emu.faults.fault_paths = {"a.bin"}
    emu.faults.drop_mid_body_n = 10_000                     # incomplete on every run
    cfg = _config(emu, tmp_path, top="artifact_attempts: 1\n")
    for _ in range(10):
        assert _cli(emu, cfg).exit_code == 1
    from archiver.ledger import open_ledger
    ledger = open_ledger(tmp_path / "state")
    try:
        assert ledger.count_events("discovered") == 1
        assert ledger.jobs_with_event("discovered") == {stuck["id"]}
    finally:
        ledger.close()


@contextlib.contextmanager
def three_new_jobs(emu, tmp_path):
    """(runtime, ledger, job ids) of a project with three jobs no pass has seen."""
    from archiver.config import load_config
    from archiver.ledger import open_ledger
    from archiver.plugins import build_plugin_manager
    from archiver.runtime import Runtime

    emu.add_project(project_id="proj_t", name="T")
    ids = {emu.add_job("proj_t")["id"] for _ in range(3)}
    plugins = build_plugin_manager(entry_points=False)
    loaded = load_config(_config(emu, tmp_path), plugins.registry,
                         env={"PLANGREP_API_KEY": emu.api_key})
    ledger = open_ledger(loaded.settings.state_dir)
    rt = Runtime(loaded, plugins, ledger)
    try:
        yield rt, ledger, ids
    finally:
        rt.close()
        ledger.close()


def test_discovered_once_when_passes_die_before_the_job_is_queued(emu, tmp_path, monkeypatch):
    """A fleet's parent killed between triage and enqueue leaves no job row: the next
    pass sees the job as new again, yet records no second "discovered" event."""
    from archiver.executors import RunReport
    from archiver.workers.fleet import triage_and_enqueue

    with three_new_jobs(emu, tmp_path) as (rt, ledger, ids):
        for _ in range(10):
            with monkeypatch.context() as mp:
                def died(jobs):
                    raise KeyboardInterrupt("killed before enqueue")
                mp.setattr(ledger, "enqueue", died)
                with pytest.raises(KeyboardInterrupt):
                    triage_and_enqueue(rt, rt.source.iter_jobs(), RunReport())
            assert ledger.job_states() == {}  # no row: each pass saw the jobs as new
        assert triage_and_enqueue(rt, rt.source.iter_jobs(), RunReport())
        assert ledger.count_events("discovered") == 3
        assert ledger.jobs_with_event("discovered") == ids


def test_a_job_listed_twice_in_one_pass_is_discovered_and_queued_once(emu, tmp_path):
    """The listing's pages shifted and a job came twice: the pass's "discovered" events,
    committed together after the listing, still hold one per job, and it is queued once."""
    from archiver.executors import RunReport
    from archiver.workers.fleet import triage_and_enqueue

    with three_new_jobs(emu, tmp_path) as (rt, ledger, ids):
        jobs = list(rt.source.iter_jobs())
        queued = triage_and_enqueue(rt, jobs + jobs[::-1], RunReport())
        assert sorted(queued) == sorted(ids)
        assert ledger.count_events("discovered") == 3
        assert ledger.jobs_with_event("discovered") == ids
