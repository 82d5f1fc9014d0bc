"""Faults of a Celery fleet: processes killed or stopped, brokers and PostgreSQL
restarted, messages duplicated or redelivered. Each scenario ends with the invariants
(:meth:`Fleet.check_invariants`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
from fleet import add_small_jobs, kill_group, with_env
from worker_helpers import wait_for

from archiver.ledger import WorkerId
from archiver.testing.emulator import ArtifactSpec

MiB = 1 << 20


def slow_job(emu, size: int = 6 * MiB, delay: float = 0.03) -> str:
    """A job whose artifact ``big.bin`` takes ``size / 64 KiB × delay`` seconds."""
    emu.add_project(project_id="proj_s", name="S")
    job = emu.add_job("proj_s", artifacts=[ArtifactSpec("big.bin", size, where="document"),
                                           ArtifactSpec("small.json", 100, where="document")])
    emu.faults.slow_body = delay
    emu.faults.fault_paths = {"big.bin"}
    return job["id"]


def writer_pid(fleet, path: str) -> int | None:
    """The pid of the process writing ``path`` now (from its pending row: a fleet with
    ``temp_files="named"``, or a cloud sink's upload)."""
    with_env(fleet.env)
    led = fleet.ledger()
    try:
        for row in led.list_pending():
            if row.path == path and row.owner:
                parsed = WorkerId.parse(row.owner)
                if parsed is not None:
                    return parsed.pid
    finally:
        led.close()
    return None


@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_a_worker_killed_mid_artifact_is_replaced_and_its_job_finished(make_fleet, emu):
    big = slow_job(emu)
    jobs = [big, *add_small_jobs(emu, 10)]
    fleet = make_fleet(temp_files="named")  # writer_pid: the pending row of big.bin
    workers = fleet.workers(2)
    disp = fleet.dispatcher()
    pid = wait_for("a worker writing big.bin", lambda: writer_pid(fleet, "big.bin"),
                   timeout=60, procs=(workers, disp))
    os.kill(pid, signal.SIGKILL)
    emu.faults.slow_body = 0.0  # the retry need not be slow
    fleet.wait_archived(jobs, timeout=120, procs=(workers, disp))
    fleet.stop_all()
    assert "WorkerLostError" in workers.stderr or "exited" in workers.stderr \
        or "signal 9" in workers.stderr, workers.stderr[-3000:]
    # The killed process held only the slow job: its two artifacts may be fetched twice.
    fleet.check_invariants(jobs, artifacts=12, refetched={"big.bin", "small.json"})


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_the_dispatcher_killed_and_restarted_loses_nothing(make_fleet, emu):
    jobs = add_small_jobs(emu, 30)
    # The killed dispatcher's leader lease must expire before the new one dispatches:
    # a short lease keeps the wait short (the default is 30 s).
    fleet = make_fleet(dispatch="{mode: celery, redispatch_after: 3s, leader_ttl: 4s}")
    disp = fleet.dispatcher()
    # no workers yet: jobs are queued in the ledger and sent to the broker
    wait_for("jobs sent", lambda: fleet.broker.depth() >= 10, timeout=60, procs=(disp,))
    kill_group(disp)
    assert disp.proc.returncode == -9
    fleet.broker.cleanup()   # and the broker lost every message meanwhile
    workers = fleet.workers(2)
    disp2 = fleet.dispatcher()
    fleet.wait_archived(jobs, timeout=120, procs=(workers, disp2))
    fleet.stop_all()
    fleet.check_invariants(jobs, artifacts=30)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_worker_stopped_past_its_lease_fences_itself(make_fleet, emu):
    big = slow_job(emu, size=4 * MiB, delay=0.03)
    fleet = make_fleet(lease="{ttl: 4s, heartbeat: 1s, max_lost: 3}", temp_files="named")
    first = fleet.workers(1, name="stopped")
    disp = fleet.dispatcher()
    pid = wait_for("a worker writing big.bin", lambda: writer_pid(fleet, "big.bin"),
                   timeout=60, procs=(first, disp))
    os.kill(pid, signal.SIGSTOP)
    try:
        emu.faults.slow_body = 0.0
        second = fleet.workers(1, name="second")
        fleet.wait_archived([big], timeout=90, procs=(second, disp))
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(3)  # the stopped one wakes, finds its lease gone and aborts its writers
    fleet.stop_all()
    # the stopped worker had fetched both artifacts: its successor fetches them again
    fleet.check_invariants([big], artifacts=2, refetched=None)


def _restart_redis(port: int = 6379) -> None:
    cli = shutil.which("redis-cli")
    subprocess.run([cli, "-p", str(port), "SHUTDOWN", "NOSAVE"], capture_output=True,
                   timeout=30)
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
                    "--port", str(port), "--save", "", "--appendonly", "no",
                    "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"],
                   check=True, capture_output=True, timeout=30)
    wait_for("redis back", lambda: subprocess.run([cli, "-p", str(port), "ping"],
                                                  capture_output=True).stdout.strip()
             == b"PONG", timeout=30, step=0.2)


def _bounce_rabbitmq() -> None:
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    time.sleep(1)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True,
                   timeout=120)


def _restart_postgres() -> None:
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: int(v) if v.isdigit() else 0)
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main",
                    "restart"], check=True, capture_output=True, timeout=120)


def test_the_broker_restarted_while_jobs_are_in_flight(make_fleet, emu, broker):
    if broker.kind == "redis" and shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH: cannot restart Redis here")
    if broker.kind == "rabbitmq" and shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not on PATH: cannot restart RabbitMQ here")
    big = slow_job(emu, size=3 * MiB, delay=0.03)
    jobs = [big, *add_small_jobs(emu, 40)]
    fleet = make_fleet(temp_files="named")
    disp = fleet.dispatcher()
    wait_for("jobs sent", lambda: fleet.broker.depth() >= 20, timeout=60, procs=(disp,))
    workers = fleet.workers(1)
    wait_for("a worker writing big.bin", lambda: writer_pid(fleet, "big.bin"),
             timeout=60, procs=(workers, disp))
    if broker.kind == "redis":
        _restart_redis()        # no persistence: every queued message is gone
    else:
        _bounce_rabbitmq()
    fleet.wait_archived(jobs, timeout=180, procs=(workers, disp))
    fleet.stop_all()
    fleet.check_invariants(jobs, artifacts=len(jobs) + 1)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_postgres_restarted_while_jobs_are_in_flight(make_fleet, emu, broker):
    if shutil.which("pg_ctlcluster") is None or not os.path.isdir("/etc/postgresql"):
        pytest.skip("no local PostgreSQL cluster to restart (pg_ctlcluster)")
    big = slow_job(emu, size=4 * MiB, delay=0.03)
    jobs = [big, *add_small_jobs(emu, 20)]
    fleet = make_fleet(ledger='{url: "${ARCHIVER_LEDGER_URL}", outage_tolerance: 60s}',
                       temp_files="named")
    workers = fleet.workers(2)
    disp = fleet.dispatcher()
    wait_for("a worker writing big.bin", lambda: writer_pid(fleet, "big.bin"),
             timeout=60, procs=(workers, disp))
    _restart_postgres()
    fleet.wait_archived(jobs, timeout=180, procs=(workers, disp))
    fleet.stop_all()
    fleet.check_invariants(jobs, artifacts=len(jobs) + 1, refetched=None)


@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_a_duplicated_publish_is_harmless(make_fleet, emu):
    jobs = add_small_jobs(emu, 20)
    fleet = make_fleet()
    disp = fleet.dispatcher()
    wait_for("jobs queued", lambda: len(fleet.states()) == 20, timeout=60, procs=(disp,))
    from archiver_celery.app import TASK
    app = fleet.broker.app()
    try:
        for job_id in jobs * 3:          # every job three more times
            app.send_task(TASK, args=[job_id], queue=fleet.broker.queue)
    finally:
        app.close()
    workers = fleet.workers(2)
    fleet.wait_archived(jobs, timeout=120, procs=(workers, disp))
    wait_for("the duplicates consumed", lambda: fleet.broker.depth() == 0, timeout=60)
    fleet.stop_all()
    fleet.check_invariants(jobs, artifacts=20)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_visibility_timeout_shorter_than_a_job(make_fleet, emu, broker):
    big = slow_job(emu, size=4 * MiB, delay=0.05)   # ~3 s
    fleet = make_fleet(celery="visibility_timeout: 1s\n")
    workers = fleet.workers(2)
    disp = fleet.dispatcher()
    fleet.wait_archived([big], timeout=90, procs=(workers, disp))
    time.sleep(2)
    fleet.stop_all()
    fleet.check_invariants([big], artifacts=2)
