"""/metrics over HTTP: ledger gauges match the ledger, hook counters match what was
written, and the expiry gauges describe the oldest unarchived job."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import requests
from service_helpers import metric_samples, wait_for

from archiver.testing.emulator import ArtifactSpec


def scrape(svc) -> dict:
    resp = requests.get(svc.url + "/metrics", timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    return metric_samples(resp.text)


def test_metrics_match_the_ledger(make_service, emu):
    emu.load_demo()
    svc = make_service(poll=3600, projects="null")
    summary = svc.ledger.summary()
    m = scrape(svc)
    assert summary["jobs"]["archived"] >= 3 and not summary["jobs"].get("lost")
    for state in ("archived", "incomplete", "lost", "nothing_to_store", "waiting"):
        assert m[("archiver_jobs", (("state", state),))] == summary["jobs"].get(state, 0)
    stored = summary["sinks"]["primary"]
    assert m[("archiver_stored_objects", (("sink", "primary"),))] == stored["objects"]
    assert m[("archiver_stored_bytes", (("sink", "primary"),))] == stored["bytes"]
    # a fresh ledger: what this process wrote is everything the ledger holds
    assert m[("archiver_objects_written_total", (("sink", "primary"),))] == stored["objects"]
    assert m[("archiver_bytes_written_total", (("sink", "primary"),))] == stored["bytes"]
    assert m[("archiver_jobs_processed_total", (("state", "archived"),))] == \
        summary["jobs"]["archived"]
    assert m[("archiver_polls_total", (("result", "ok"),))] == 1
    assert m[("archiver_pending_writers", ())] == 0
    assert m[("archiver_oldest_unarchived_job_age_seconds", ())] == 0
    assert ("archiver_oldest_unarchived_job_expires_in_seconds", ()) not in m


def test_oldest_unarchived_job_gauges(make_service, emu):
    now = datetime.now(timezone.utc)
    created = now - timedelta(hours=2)          # completed 3 minutes after creation
    expires = now + timedelta(hours=5)
    job = emu.add_job("p1", artifacts=[ArtifactSpec("never.bin", 10)], created_at=created,
                      expires_at=expires)["id"]
    newer = emu.add_job("p1", artifacts=[ArtifactSpec("also.bin", 10)])["id"]  # also stuck
    emu.faults.drop_mid_body_n = 10_000
    svc = make_service(poll=0.05, attempts=1)
    wait_for(lambda: scrape(svc)[("archiver_jobs_processed_total",
                                  (("state", "incomplete"),))] >= 2)
    assert svc.ledger.job_states()[job] == svc.ledger.job_states()[newer] == "incomplete"
    m = scrape(svc)
    completed = datetime.fromisoformat(emu.job(job)["completedAt"].replace("Z", "+00:00"))
    age = m[("archiver_oldest_unarchived_job_age_seconds", ())]
    left = m[("archiver_oldest_unarchived_job_expires_in_seconds", ())]
    assert abs(age - (time.time() - completed.timestamp())) < 60
    assert abs(left - (expires.timestamp() - time.time())) < 60
    assert m[("archiver_jobs", (("state", "incomplete"),))] == 2
    assert m[("archiver_object_failures_total", (("sink", "*"),))] >= 2
    wait_for(lambda: scrape(svc)[("archiver_job_retries_total", ())] >= 1)
    emu.faults.drop_mid_body_n = 0
    wait_for(lambda: svc.ledger.job_states().get(job) == "archived")
    wait_for(lambda: scrape(svc)[("archiver_oldest_unarchived_job_age_seconds", ())] == 0)
