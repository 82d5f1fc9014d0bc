"""Jobs through real Celery workers on Redis and RabbitMQ, with a PostgreSQL ledger."""

from __future__ import annotations

import json

from fleet import add_small_jobs
from worker_helpers import wait_for


def test_jobs_go_through_celery_workers(make_fleet, emu):
    jobs = add_small_jobs(emu, 40, artifacts=2)
    fleet = make_fleet()
    workers = fleet.workers(2)
    disp = fleet.dispatcher()
    fleet.wait_archived(jobs, timeout=120, procs=(workers, disp))
    fleet.stop_all()
    fleet.check_invariants(jobs, artifacts=80)


def test_two_thousand_jobs_through_four_worker_processes(make_fleet, emu):
    jobs = add_small_jobs(emu, 2000)
    fleet = make_fleet(dispatch="{mode: celery, redispatch_after: 30s, max_outstanding: 400}")
    disp = fleet.dispatcher(poll=2.0)
    workers = fleet.workers(4)
    fleet.wait_archived(jobs, timeout=600, procs=(workers, disp))
    fleet.stop_all()
    fleet.check_invariants(jobs, artifacts=2000)


def test_only_job_ids_travel_through_the_broker(make_fleet, emu, broker, ledger_url):
    jobs = add_small_jobs(emu, 5)
    # trust auth ignores the password: it is there to be looked for
    fleet = make_fleet()
    fleet.env["ARCHIVER_LEDGER_URL"] = ledger_url.replace("postgres@", "postgres:pg-pw-4471@")
    disp = fleet.dispatcher()
    wait_for("jobs sent", lambda: fleet.broker.depth() >= 5, timeout=60, procs=(disp,))
    bodies = fleet.broker.peek()
    assert len(bodies) >= 5
    for body in bodies:
        assert emu.api_key not in body and "pg-pw-4471" not in body
        assert "guest" not in body  # the broker's own credentials
    assert {json.loads(b)[0][0] for b in bodies} <= set(jobs)
    workers = fleet.workers(1)
    fleet.wait_archived(jobs, timeout=60, procs=(workers, disp))
    fleet.stop_all()
    for p in fleet.procs:
        assert "pg-pw-4471" not in p.stderr + p.stdout and emu.api_key not in p.stderr
        assert "guest:guest" not in p.stderr + p.stdout  # the broker's password
