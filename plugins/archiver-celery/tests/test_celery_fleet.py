"""Jobs through real Celery workers on Redis and RabbitMQ, with a PostgreSQL ledger."""

from __future__ import annotations

from fleet import add_small_jobs


def test_jobs_go_through_celery_workers(make_fleet, emu):
    jobs = add_small_jobs(emu, 40, artifacts=2)
    fleet = make_fleet()
    workers = fleet.workers(2)
    disp = fleet.dispatcher()
    fleet.wait_archived(jobs, timeout=120, procs=(workers, disp))
    fleet.stop_all()
    fleet.check_invariants(jobs, artifacts=80)
