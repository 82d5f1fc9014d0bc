"""The fleet API budget (archiver.budget, ``rate_limit:``): one rate and one 429 pause for
every process on the ledger.

The end-to-end tests run real ``archiver run --workers 2`` processes (a supervisor and two
worker processes, each taking tokens from the ledger) against the emulator, and measure
the request rate from the emulator's request log (``RequestRecord.at``)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from archiver.budget import FleetBudget
from archiver.errors import LedgerError
from archiver.ledger import open_ledger
from archiver.testing.configs import basic_config
from archiver.testing.emulator import ArtifactSpec

RATE, BURST = 20.0, 5


# --------------------------------------------------------------------------- in process
def acquire_for(budget: FleetBudget, seconds: float, threads: int = 4) -> list[float]:
    """Acquire from ``threads`` threads for ``seconds``; the monotonic times granted."""
    times: list[float] = []
    lock, end = threading.Lock(), time.monotonic() + seconds

    def run() -> None:
        while time.monotonic() < end:
            if budget.acquire():
                with lock:
                    times.append(time.monotonic())

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(seconds + 10)
    return [t for t in times if t < end + 0.05]


def test_two_handles_share_one_rate_with_few_ledger_calls(tmp_path):
    a, b = open_ledger(tmp_path), open_ledger(tmp_path)
    try:
        one, two = (FleetBudget(led, "api", 100.0, 10) for led in (a, b))
        results: list[list[float]] = [[], []]
        workers = [threading.Thread(target=lambda i=i, bud=bud: results.__setitem__(
            i, acquire_for(bud, 1.5))) for i, bud in enumerate((one, two))]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        total = len(results[0]) + len(results[1])
        # 10 at once, then 100/s for 1.5 s: 160 at most (one batch of slack per handle)
        assert 100 <= total <= 160 + 2 * one.batch, total
        assert results[0] and results[1], "both handles got requests through"
        # batches of ~100 ms: ~10 ledger calls a second per handle, not one per request
        assert one.batch == 10 and one.ledger_calls + two.ledger_calls < total / 3
    finally:
        a.close()
        b.close()


def test_a_pause_stops_the_other_handles(tmp_path):
    a, b = open_ledger(tmp_path), open_ledger(tmp_path)
    try:
        one, two = FleetBudget(a, "api", 50.0, 5), FleetBudget(b, "api", 50.0, 5)
        assert one.acquire() and two.acquire()
        paused = time.monotonic()
        one.pause(0.8)
        time.sleep(max(0.0, two.window - (time.monotonic() - paused)))  # its batch lapses
        assert two.acquire() and one.acquire()
        assert time.monotonic() - paused >= 0.75
        stop = threading.Event()
        one.pause(5.0)
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        assert two.acquire(stop) is False  # a stop ends the wait
        assert time.monotonic() - started < 2.0
    finally:
        a.close()
        b.close()


class BrokenLedger:
    def __init__(self, exc: BaseException):
        self.exc, self.calls = exc, 0

    def take_tokens(self, *args):
        self.calls += 1
        raise self.exc

    def pause_tokens(self, *args):
        raise self.exc


@pytest.mark.parametrize("exc", [
    LedgerError("ledger at postgresql://db:5432/archiver: PostgreSQL did not answer for 60s"),
    RuntimeError("connection to postgresql://archiver:hunter2@db/archiver failed")])
def test_a_ledger_error_falls_back_to_a_local_limit(exc, caplog):
    ledger = BrokenLedger(exc)
    budget = FleetBudget(ledger, "api", RATE, BURST)
    with caplog.at_level(logging.WARNING, logger="archiver.budget"):
        granted = acquire_for(budget, 1.0)
        budget.pause(0.1)
    assert BURST + RATE * 0.5 <= len(granted) <= BURST + RATE * 1.0 + 2, len(granted)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings  # one warning per outage, not one per request
    assert "limits itself to 20 requests/s alone" in warnings[0]
    assert "hunter2" not in warnings[0] and type(exc).__name__ in warnings[0]


def test_a_ledger_without_token_buckets_is_a_quiet_local_limit(tmp_path, caplog):
    open_ledger(tmp_path).close()
    ro = open_ledger(tmp_path, read_only=True)  # a dry run's ledger: no write methods
    try:
        budget = FleetBudget(ro, "api", 1000.0, 3)
        with caplog.at_level(logging.WARNING, logger="archiver.budget"):
            assert all(budget.acquire() for _ in range(5))
        assert budget.ledger_calls == 0 and not caplog.records
    finally:
        ro.close()


# --------------------------------------------------------------------------- processes
def fleet_config(emu, tmp_path: Path, rate_limit: str) -> Path:
    path = tmp_path / "archiver.yaml"
    path.write_text(basic_config(emu, tmp_path, top=rate_limit))
    return path


def add_small_jobs(emu, n: int) -> list[str]:
    emu.add_project(project_id="proj_r", name="R")
    return [emu.add_job("proj_r", artifacts=[
        ArtifactSpec(f"a{i}.json", 500 + i, where="document"),
        ArtifactSpec(f"b{i}.bin", 800 + i, where="result")])["id"] for i in range(n)]


def start_run(cfg: Path, emu, tmp_path: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "PLANGREP_API_KEY": emu.api_key, "ARCHIVER_LOAD_ENTRY_POINTS": "0"}
    out = open(tmp_path / f"{name}.out", "wb")  # noqa: SIM115 - closed with the process
    err = open(tmp_path / f"{name}.err", "wb")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "archiver", "run", "-c", str(cfg),
                             "--workers", "2", "--json"], stdout=out, stderr=err,
                            stdin=subprocess.DEVNULL, env=env)


def finish(proc: subprocess.Popen, tmp_path: Path, name: str, timeout: float = 120) -> dict:
    try:
        rc = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    err = (tmp_path / f"{name}.err").read_text(errors="replace")
    assert rc == 0, err[-4000:]
    return json.loads((tmp_path / f"{name}.out").read_text())


def api_times(emu) -> list[float]:
    return sorted(r.at for r in emu.requests.snapshot() if r.route != "storage")


def busiest(times: list[float], window: float) -> int:
    """The most requests inside any ``window`` seconds."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


JOBS = 30


def test_run_workers_keep_within_the_fleet_budget_and_exceed_it_without(emu, tmp_path):
    jobs = add_small_jobs(emu, JOBS)
    limited = tmp_path / "limited"
    limited.mkdir()
    cfg = fleet_config(emu, limited,
                       f"rate_limit: {{requests_per_second: {RATE:g}, burst: {BURST}}}\n")
    doc = finish(start_run(cfg, emu, limited, "limited"), limited, "limited")
    assert sorted(doc["archived"]) == sorted(jobs)
    times = api_times(emu)
    n, span = len(times), times[-1] - times[0]
    rate = (n - BURST) / span
    per_second, per_3s = busiest(times, 1.0), busiest(times, 3.0)
    print(f"\nwith rate_limit {RATE:g}/s burst {BURST}: {n} API requests in {span:.2f}s "
          f"({rate:.1f}/s after the burst); busiest 1 s: {per_second}, 3 s: {per_3s}")
    assert n >= 3 * JOBS
    assert rate <= RATE * 1.05, rate
    # a token is spent up to ~100 ms after the ledger granted it, and the network jitters
    slack = 2 + RATE * 0.2
    assert per_second <= BURST + RATE + slack and per_3s <= BURST + 3 * RATE + slack

    emu.requests.clear()  # the same run without the budget: it must go faster
    free = tmp_path / "free"
    free.mkdir()
    doc = finish(start_run(fleet_config(emu, free, ""), emu, free, "free"), free, "free")
    assert sorted(doc["archived"]) == sorted(jobs)
    times = api_times(emu)
    per_second = busiest(times, 1.0)
    print(f"without rate_limit: {len(times)} API requests in {times[-1] - times[0]:.2f}s; "
          f"busiest 1 s: {per_second}")
    assert per_second > BURST + RATE + slack, "the test cannot tell limited from free"


def test_a_429_seen_by_one_worker_pauses_every_worker(emu, tmp_path):
    jobs = add_small_jobs(emu, JOBS)
    cfg = fleet_config(emu, tmp_path, "rate_limit: {requests_per_second: 20}\n")
    proc = start_run(cfg, emu, tmp_path, "paused")
    try:
        deadline = time.monotonic() + 60
        while emu.count(route="result") < 4:  # both workers are archiving
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended early"
            time.sleep(0.02)
        emu.faults.rate_limit_retry_after = 2
        emu.faults.rate_limit_n = 1
    finally:
        doc = finish(proc, tmp_path, "paused")
    assert sorted(doc["archived"]) == sorted(jobs)
    records = sorted((r for r in emu.requests.snapshot() if r.route != "storage"),
                     key=lambda r: r.at)
    (hit,) = [r for r in records if r.status == 429]
    # Requests already sent, or holding a token of the last ~100 ms batch, may still
    # arrive just after the 429; then nobody sends anything until the pause ends.
    during = [r for r in records if hit.at + 0.3 < r.at < hit.at + 1.95]
    after = [r for r in records if r.at >= hit.at + 1.95]
    gap = min((r.at for r in after), default=float("inf")) - hit.at
    print(f"\n429 (Retry-After: 2) at +0; next request at +{gap:.2f}s; "
          f"{len(during)} requests inside the pause window")
    assert during == [], [(r.route, round(r.at - hit.at, 3)) for r in during]
    assert after, "the run went on after the pause"
