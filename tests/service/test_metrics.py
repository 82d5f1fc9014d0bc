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


def test_queue_gauges_come_from_queue_stats(tmp_path):
    from archiver.ledger import open_ledger
    from archiver.service.metrics import ServiceMetrics
    from archiver.testing.ledger_contract import job

    ledger = open_ledger(tmp_path)
    try:
        m = metric_samples(ServiceMetrics(ledger).render()[0].decode())
        assert (m[("archiver_queue_depth", ())], m[("archiver_queue_lag_seconds", ())],
                m[("archiver_leased_jobs", ())], m[("archiver_claims_total", ())]) == (0, 0, 0, 0)
        assert ledger.enqueue([job(i) for i in range(5)]) == 5
        assert ledger.claim(job(0), "w", 60.0, max_lost=3).ok
        assert ledger.claim(job(1), "w", 60.0, max_lost=3).ok
        ledger.finish_job(job(1), "w", "archived")
        time.sleep(0.05)
        m = metric_samples(ServiceMetrics(ledger).render()[0].decode())
        stats = ledger.queue_stats()
        assert m[("archiver_queue_depth", ())] == stats["queued"] == 3
        assert m[("archiver_leased_jobs", ())] == stats["leased"] == 1
        assert m[("archiver_claims_total", ())] == stats["claims_total"] == 2
        assert 0.05 <= m[("archiver_queue_lag_seconds", ())] < 60
    finally:
        ledger.close()
