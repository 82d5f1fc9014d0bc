"""The dispatcher: priorities for jobs near expiry, one leader among replicas, metrics."""

from __future__ import annotations

import re
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from fleet import add_small_jobs, kill_group
from worker_helpers import wait_for

from archiver.testing.emulator import ArtifactSpec


def archived_order(fleet, job_ids: list[str]) -> list[str]:
    from fleet import with_env
    with_env(fleet.env)
    led = fleet.ledger()
    try:
        rows = [r for r in led.job_rows() if r.job_id in job_ids and r.archived_at]
    finally:
        led.close()
    return [r.job_id for r in sorted(rows, key=lambda r: r.archived_at)]


def test_a_job_near_expiry_jumps_the_queue(make_fleet, emu):
    normal = add_small_jobs(emu, 25)
    fleet = make_fleet(dispatch="{mode: celery, urgent_within: 1h, redispatch_after: 60s}")
    disp = fleet.dispatcher()
    wait_for("the normal jobs sent", lambda: fleet.broker.depth() >= 25, timeout=60,
             procs=(disp,))
    soon = datetime.now(timezone.utc) + timedelta(minutes=30)
    urgent = emu.add_job("proj_c", artifacts=[ArtifactSpec("u.json", 300, where="document")],
                         expires_at=soon)["id"]
    wait_for("the urgent job sent", lambda: fleet.broker.depth() >= 26, timeout=60,
             procs=(disp,))
    workers = fleet.workers(1)   # one process, one message at a time
    fleet.wait_archived([urgent, *normal], timeout=120, procs=(workers, disp))
    fleet.stop_all()
    order = archived_order(fleet, [urgent, *normal])
    # the worker may hold one message fetched before it saw the urgent one
    assert urgent in order[:2], (order.index(urgent), fleet.broker.kind)


def _leading(p) -> int:
    return p.stderr.count("leading: this replica sends jobs")


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_one_replica_dispatches_and_another_takes_over_when_it_dies(make_fleet, emu, broker):
    first = add_small_jobs(emu, 10)
    fleet = make_fleet(dispatch="{mode: celery, leader_ttl: 3s, redispatch_after: 5s}")
    a = fleet.dispatcher()
    wait_for("a leader", lambda: _leading(a), timeout=60, procs=(a,))
    b = fleet.dispatcher()
    wait_for("b polling", lambda: "poll 3:" in b.stderr, timeout=60, procs=(a, b))
    assert _leading(b) == 0 and "another replica leads" not in a.stderr
    workers = fleet.workers(2)
    fleet.wait_archived(first, timeout=90, procs=(workers, a, b))
    kill_group(a)
    assert a.proc.returncode == -9
    wait_for("b leads", lambda: _leading(b), timeout=20, procs=(b,))
    second = [emu.add_job("proj_c", artifacts=[ArtifactSpec(f"z{i}.json", 99,
                                                            where="document")])["id"]
              for i in range(5)]
    fleet.wait_archived(second, timeout=90, procs=(workers, b))
    fleet.stop_all()
    fleet.check_invariants(first + second, artifacts=15)


@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_serve_exposes_dispatch_and_queue_metrics(make_fleet, emu, broker):
    jobs = add_small_jobs(emu, 8)
    fleet = make_fleet(top="serve: {port: 0, secrets: {default: whsec_"
                           "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}}\n")
    disp = fleet.dispatcher(serve=True)
    url = wait_for("the service URL", lambda: re.search(r"serving webhooks on (http://[^/\s]+)",
                                                         disp.stderr), timeout=60,
                   procs=(disp,)).group(1)

    def metrics() -> str:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            return resp.read().decode()

    text = wait_for("jobs sent", lambda: (m := metrics()) and
                    re.search(r"^archiver_dispatch_sent_total 8\.0$", m, re.M) and m,
                    timeout=60, procs=(disp,))
    assert re.search(r"^archiver_dispatch_leader 1\.0$", text, re.M), text
    assert re.search(r"^archiver_queue_depth 8\.0$", text, re.M), text
    assert re.search(r"^archiver_dispatch_outstanding 8\.0$", text, re.M), text
    workers = fleet.workers(1)
    fleet.wait_archived(jobs, timeout=90, procs=(workers, disp))
    text = wait_for("outstanding 0", lambda: (m := metrics()) and
                    re.search(r"^archiver_dispatch_outstanding 0\.0$", m, re.M) and m,
                    timeout=30, procs=(disp,))
    assert re.search(r"^archiver_queue_depth 0\.0$", text, re.M), text
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
        assert b'"dispatch"' in resp.read()
    fleet.stop_all()
