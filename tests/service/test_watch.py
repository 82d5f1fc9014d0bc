"""The watch loop against the emulator: ordering, waiting jobs, retries with backoff,
outages, lost jobs, expiry warnings, a refused key, graceful shutdown."""

from __future__ import annotations

import logging
import os
import signal
import threading
from datetime import datetime, timedelta, timezone

from service_helpers import partials, service_config, wait_for

from archiver.runtime import Runtime
from archiver.config import load_config
from archiver.ledger import WAITING, open_ledger
from archiver.model import Job
from archiver.plugins import build_plugin_manager
from archiver.service import Service
from archiver.testing.emulator import ArtifactSpec


def states(svc):
    return svc.ledger.job_states()


def events(svc, kind, job_id=None):
    return [e for e in svc.ledger.events(job_id) if e["kind"] == kind]


def test_archives_soonest_expiry_first(make_service, emu):
    now = datetime.now(timezone.utc)
    expiries = {"job_late": 5, "job_soon": 1, "job_mid": 3}  # days from now
    for job_id, days in expiries.items():
        emu.add_job("p1", job_id=job_id, artifacts=[ArtifactSpec("a.bin", 10)],
                    expires_at=now + timedelta(days=days))
    svc = make_service(serve=False, poll=3600, concurrency=1)
    wait_for(lambda: len([s for s in states(svc).values() if s == "archived"]) == 3)
    order = [r.path.split("/")[-2] for r in emu.requests.snapshot() if r.route == "result"]
    assert order == ["job_soon", "job_mid", "job_late"]


def test_waiting_jobs_are_tracked_then_archived(make_service, emu):
    job = emu.add_job("p1", status="processing", artifacts=[ArtifactSpec("w.bin", 10)])["id"]
    svc = make_service(serve=False, poll=0.05)
    assert states(svc)[job] == WAITING
    emu.set_status(job, "completed")
    wait_for(lambda: states(svc).get(job) == "archived")
    assert sum(1 for r in emu.requests.snapshot() if r.route == "result") == 1


def test_incomplete_job_retried_with_backoff(make_service, emu):
    job = emu.add_job("p1", artifacts=[ArtifactSpec("ok.bin", 10),
                                       ArtifactSpec("flaky.bin", 10)])["id"]
    emu.faults.fault_paths = {"flaky.bin"}
    emu.faults.drop_mid_body_n = 10_000
    svc = make_service(serve=False, poll=0.02, attempts=1)
    wait_for(lambda: svc.watcher.polls >= 60, what="60 polls")
    attempts = sum(1 for r in emu.requests.snapshot()
                   if r.route == "artifact" and r.query.get("path") == "flaky.bin")
    assert states(svc)[job] == "incomplete"
    # 0.02 s doubling: far fewer attempts than polls, and more than one
    assert 2 <= attempts <= 20, attempts
    emu.faults.drop_mid_body_n = 0
    wait_for(lambda: states(svc).get(job) == "archived", timeout=20)
    assert sum(1 for r in emu.requests.snapshot()
               if r.route == "artifact" and r.query.get("path") == "ok.bin") == 1


def test_api_down_keeps_retrying_and_catches_up(make_service, emu, caplog):
    caplog.set_level(logging.WARNING, logger="archiver.service.watch")
    first = emu.add_job("p1", artifacts=[ArtifactSpec("1.bin", 10)])["id"]
    svc = make_service(serve=True, poll=0.05)
    wait_for(lambda: states(svc).get(first) == "archived")
    port = emu.port
    emu.stop()
    later = [emu.add_job("p1", artifacts=[ArtifactSpec("2.bin", 10)])["id"] for _ in range(3)]
    failures = svc.watcher.poll_failures
    wait_for(lambda: svc.watcher.poll_failures >= failures + 3, what="failed polls")
    assert svc.health()[0]                      # still running
    assert any("poll failed" in r.getMessage() for r in caplog.records)
    emu.start(port=port)
    wait_for(lambda: all(states(svc).get(j) == "archived" for j in later))
    assert not svc.done.is_set()


def test_refused_key_is_fatal_exit_3(make_service, emu):
    emu.add_job("p1", artifacts=[ArtifactSpec("a.bin", 10)])
    svc = make_service(serve=False, poll=0.05, key="pk_wrong")
    assert svc.wait(20)
    assert svc.close() == 3
    assert "refused" in svc.watcher.fatal
    assert emu.count(route="jobs") == 1        # one request, no retry storm


def test_lost_job_is_recorded_loudly(make_service, emu, caplog):
    caplog.set_level(logging.ERROR)
    job = emu.add_job("p1", status="processing", artifacts=[ArtifactSpec("l.bin", 10)])["id"]
    svc = make_service(serve=True, poll=0.05)
    assert states(svc)[job] == WAITING
    emu.expire(job)
    # the state is written before the event: wait for both
    wait_for(lambda: states(svc).get(job) == "lost" and events(svc, "lost", job))
    assert any(r.levelno == logging.ERROR and job in r.getMessage() for r in caplog.records)
    problems = svc.ledger.summary()["problems"]
    assert [p["state"] for p in problems if p["job_id"] == job] == ["lost"]


def test_open_job_that_vanished_after_expiry_is_lost(make_service, emu):
    """A ledger job the API no longer lists, past its expiry: re-read, 404 -> lost."""
    svc = make_service(serve=False, poll=3600)
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    svc.ledger.record_job(Job("job_gone", "p1", "processing",
                              {"id": "job_gone", "projectId": "p1", "status": "processing",
                               "expiresAt": past}), WAITING)
    svc.watcher.poll_once()
    assert states(svc)["job_gone"] == "lost"
    assert emu.count(route="job") == 1


def test_expiry_warning_once(make_service, emu, caplog):
    caplog.set_level(logging.WARNING, logger="archiver.service.watch")
    soon = datetime.now(timezone.utc) + timedelta(hours=2)
    job = emu.add_job("p1", artifacts=[ArtifactSpec("stuck.bin", 10)], expires_at=soon)["id"]
    relaxed = emu.add_job("p1", status="processing", artifacts=[])["id"]  # 7 days left
    emu.faults.drop_mid_body_n = 10_000
    svc = make_service(serve=True, poll=0.02, attempts=1)
    wait_for(lambda: svc.watcher.polls >= 10)
    assert states(svc)[job] == "incomplete"
    assert len(events(svc, "expiry_warning", job)) == 1
    assert not events(svc, "expiry_warning", relaxed)
    assert any("EXPIRY WARNING" in r.getMessage() and job in r.getMessage()
               for r in caplog.records)
    text = svc.metrics.render()[0].decode()
    assert "archiver_expiry_warnings_total 1.0" in text
    assert "archiver_jobs_expiring_soon 1.0" in text


def _slow_job(emu, size=2 << 20):
    job = emu.add_job("p1", artifacts=[ArtifactSpec("quick.bin", 10),
                                       ArtifactSpec("slow.bin", size)])["id"]
    emu.faults.slow_body = 0.05    # 64 KiB per 50 ms: 2 MiB take ~1.6 s
    return job


def _slow_started(emu):
    return any(r.route == "artifact" and r.query.get("path") == "slow.bin"
               for r in emu.requests.snapshot())


def test_shutdown_grace_lets_the_in_flight_artifact_finish(make_service, emu, tmp_path):
    job = _slow_job(emu, size=640 << 10)
    svc = make_service(serve=True, poll=3600, wait_first_poll=False,
                       watch_yaml="grace_period: 60\n", concurrency=1)
    wait_for(lambda: _slow_started(emu))
    svc.shutdown()
    assert svc.wait(30)
    assert svc.close() == 0
    assert states(svc)[job] == "archived"
    assert (tmp_path / "archive" / "p1" / job / "data" / "artifacts" / "slow.bin").stat().st_size \
        == 640 << 10


def test_shutdown_after_grace_aborts_cleanly_and_the_next_start_resumes(make_service, emu,
                                                                        tmp_path):
    job = _slow_job(emu)
    svc = make_service(serve=True, poll=3600, wait_first_poll=False,
                       watch_yaml="grace_period: 0.2\n")
    wait_for(lambda: _slow_started(emu))
    svc.shutdown()
    assert svc.wait(30)
    assert svc.close() == 0
    assert states(svc)[job] == "incomplete"
    assert not partials(tmp_path / "archive")
    assert not (tmp_path / "archive" / "p1" / job / "data" / "artifacts" / "slow.bin").exists()
    assert svc.ledger.summary()["pending_writers"] == 0
    emu.faults.slow_body = 0
    again = make_service(serve=False, poll=3600)
    wait_for(lambda: states(again).get(job) == "archived")
    assert sum(1 for r in emu.requests.snapshot()
               if r.route == "artifact" and r.query.get("path") == "quick.bin") == 1


def test_second_signal_aborts_at_once(make_service, emu, tmp_path):
    job = _slow_job(emu, size=64 << 20)     # would take minutes
    svc = make_service(serve=False, poll=3600, wait_first_poll=False,
                       watch_yaml="grace_period: 3600\n")
    wait_for(lambda: _slow_started(emu))
    svc.shutdown()
    svc.abort()
    assert svc.wait(30)
    assert svc.close() == 0
    assert states(svc)[job] == "incomplete"
    assert not partials(tmp_path / "archive")


def test_real_signals_first_drains_second_aborts(emu, tmp_path):
    """Service.run() in the main thread: SIGTERM starts the drain (a grace period of an
    hour), SIGINT aborts the download at once; nothing partial, handlers restored."""
    job = _slow_job(emu, size=64 << 20)
    plugins = build_plugin_manager(entry_points=False)
    loaded = load_config(service_config(emu, tmp_path, watch="grace_period: 3600\n"),
                         plugins.registry, env={"PLANGREP_API_KEY": emu.api_key})
    ledger = open_ledger(loaded.settings.state_dir)
    svc = Service(Runtime(loaded, plugins, ledger), serve=False, poll_interval=3600)
    before = signal.getsignal(signal.SIGTERM)

    errors = []

    def kick():
        try:
            wait_for(lambda: _slow_started(emu))
            os.kill(os.getpid(), signal.SIGTERM)
            wait_for(lambda: svc.rt.draining.is_set())
            assert not svc.rt.stop.is_set()
            os.kill(os.getpid(), signal.SIGINT)
            wait_for(lambda: svc.rt.stop.is_set())
        except BaseException as exc:  # noqa: BLE001 - reported below; never leave run() waiting
            errors.append(exc)
            svc.abort()

    try:
        code = svc.run(on_started=lambda s: threading.Thread(target=kick, daemon=True).start())
        assert not errors
        assert code == 0
        assert ledger.job_states()[job] == "incomplete"
        assert ledger.summary()["pending_writers"] == 0
    finally:
        ledger.close()
    assert not partials(tmp_path / "archive")
    assert signal.getsignal(signal.SIGTERM) is before
