"""Stops that stop (issue #13, item 4): a download stalled mid-body, the connection open
and silent, must not hold a stop up. Real ``archiver serve`` / ``run`` / ``serve
--workers`` processes against the emulator (default 60 s read timeout); after the stop
nothing partial is in the sink, the job is incomplete and the next run completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from service_helpers import partials, service_config, wait_for

from archiver.ledger import open_ledger
from archiver.testing.emulator import ArtifactSpec

pytestmark = pytest.mark.timeout(120)
BIG = 3 << 20
SERVE = "port: 0\nsecrets:\n  default: wss_stop_test\n"


def _start(args, cfg, tmp_path, emu, name):
    err = open(tmp_path / f"{name}.log", "w")
    env = {**os.environ, "PLANGREP_API_KEY": emu.api_key, "ARCHIVER_LOAD_ENTRY_POINTS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "archiver", *args, "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=err, env=env)
    err.close()
    return proc


def _stalled_job(emu):
    job = emu.add_job("p1", artifacts=[ArtifactSpec("notes.json", 500),
                                       ArtifactSpec("big.bin", BIG)])["id"]
    emu.faults.fault_paths = {"big.bin"}
    emu.faults.stall_mid_body_n = 1
    return job


def _stop(proc, signals: int, gap: float = 0.5) -> float:
    """Send SIGTERM ``signals`` times (``gap`` apart): seconds from the last one to exit."""
    for n in range(signals):
        if n:
            time.sleep(gap)
        proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("still running 60 s after the stop") from None
    return time.monotonic() - t0


def _check_stopped_then_resumed(emu, tmp_path, cfg, job, log_name):
    log = (tmp_path / log_name).read_text()
    assert "Traceback" not in log, log[-3000:]
    assert not partials(tmp_path / "archive")
    assert not list((tmp_path / "archive").rglob("big.bin"))
    ledger = open_ledger(tmp_path / "state")
    try:
        assert ledger.job_states()[job] == "incomplete"
        assert ledger.summary()["pending_writers"] == 0
    finally:
        ledger.close()
    # the next run completes the job
    nxt = _start(["run"], cfg, tmp_path, emu, "next")
    assert nxt.wait(60) == 0, (tmp_path / "next.log").read_text()[-3000:]
    (stored,) = (tmp_path / "archive").rglob("big.bin")
    assert stored.read_bytes() == emu.artifact_bytes(job, "big.bin")
    ledger = open_ledger(tmp_path / "state")
    try:
        assert ledger.job_states()[job] == "archived"
    finally:
        ledger.close()


def _serve_until_stalled(emu, tmp_path, grace: float, extra=()):
    cfg = service_config(emu, tmp_path, serve=SERVE, watch=f"grace_period: {grace}\n")
    job = _stalled_job(emu)
    proc = _start(["serve", "--test-poll-interval", "0.5", *extra], cfg, tmp_path, emu,
                  "serve")
    try:
        wait_for(emu.faults.stalled.is_set, timeout=40, what="the stalled download")
        time.sleep(0.3)  # the client is in its blocking read now
    except BaseException:
        proc.kill()
        raise
    return cfg, job, proc


def test_serve_sigterm_during_a_stalled_download_exits_after_the_grace(emu, tmp_path):
    grace = 2.0
    cfg, job, proc = _serve_until_stalled(emu, tmp_path, grace)
    elapsed = _stop(proc, 1)
    assert proc.returncode == 0
    assert grace - 0.5 <= elapsed < grace + 5, elapsed
    _check_stopped_then_resumed(emu, tmp_path, cfg, job, "serve.log")


def test_serve_second_sigterm_during_a_stalled_download_exits_at_once(emu, tmp_path):
    cfg, job, proc = _serve_until_stalled(emu, tmp_path, 30.0)
    elapsed = _stop(proc, 2)
    assert proc.returncode == 0
    assert elapsed < 2, elapsed
    _check_stopped_then_resumed(emu, tmp_path, cfg, job, "serve.log")


def test_run_sigterm_during_a_stalled_download_exits_at_once(emu, tmp_path):
    cfg = service_config(emu, tmp_path)
    job = _stalled_job(emu)
    proc = _start(["run"], cfg, tmp_path, emu, "run")
    wait_for(emu.faults.stalled.is_set, timeout=40, what="the stalled download")
    time.sleep(0.3)
    elapsed = _stop(proc, 1)
    assert proc.returncode == 130
    assert elapsed < 2, elapsed
    _check_stopped_then_resumed(emu, tmp_path, cfg, job, "run.log")


def test_serve_workers_stop_a_stalled_download_in_the_child(emu, tmp_path):
    """``serve --workers 2``: the worker process blocked in the stalled download aborts
    on the forwarded second signal as promptly as a single process."""
    cfg, job, proc = _serve_until_stalled(emu, tmp_path, 30.0, extra=("--workers", "2"))
    elapsed = _stop(proc, 2)
    assert proc.returncode == 0
    assert elapsed < 3, elapsed
    _check_stopped_then_resumed(emu, tmp_path, cfg, job, "serve.log")


@pytest.mark.parametrize("route", ["jobs", "result"])
def test_a_stop_cuts_a_stalled_listing_or_result_request(route, emu, tmp_path):
    """The server accepted the request and went silent before its headers: the job
    listing (``run``'s pass) or the job's result. SIGTERM exits within 2 s, not after the
    60 s read timeout; nothing is recorded as failed; the next run archives the job."""
    emu.add_project(project_id="p1", name="P")
    job = emu.add_job("p1", artifacts=[ArtifactSpec("notes.json", 500)])["id"]
    cfg = service_config(emu, tmp_path)
    emu.faults.route_latency = {route: 300.0}
    proc = _start(["run"], cfg, tmp_path, emu, "run")
    time.sleep(3)   # well inside the stalled request
    took = _stop(proc, 1)
    log = (tmp_path / "run.log").read_text()
    assert took < 2.0, (took, log[-2000:])
    assert proc.returncode == 130, log[-2000:]
    assert "Traceback" not in log, log[-3000:]
    emu.faults.route_latency = {}
    nxt = _start(["run"], cfg, tmp_path, emu, "next")
    assert nxt.wait(60) == 0, (tmp_path / "next.log").read_text()[-3000:]
    ledger = open_ledger(tmp_path / "state")
    try:
        assert ledger.job_states()[job] == "archived"
    finally:
        ledger.close()
