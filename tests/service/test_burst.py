"""1,000 webhook deliveries in a burst against a small queue: backpressure (503, the
emulator retries), a bounded queue, and every job archived exactly once."""

from __future__ import annotations

from collections import Counter

from service_helpers import SECRET, metric_samples, wait_for

from archiver.testing.emulator import ArtifactSpec

STEPS = ("awaiting_uploads", "uploading", "preflighting", "processing", "completed")
JOBS = 100          # x 5 status changes x (delivery + duplicate) = 1,000 deliveries
QUEUE = 10


def test_thousand_webhooks_in_a_burst(make_service, emu):
    ids = [emu.add_job("p1", status="provisioning",
                       artifacts=[ArtifactSpec(f"out/{n}.json", 64)])["id"] for n in range(JOBS)]
    svc = make_service(poll=3600, concurrency=8,
                       serve_yaml=f"port: 0\nqueue_size: {QUEUE}\nsecrets:\n"
                                  f"  default: {SECRET}\n")
    assert set(svc.ledger.job_states().values()) == {"waiting"}
    # the sender retries a 503 after Retry-After (1 s), backing off up to 4 s
    emu.configure_webhooks(svc.url + "/webhooks/plangrep", secret=SECRET, duplicate=1.0,
                           workers=4, max_attempts=60, retry_delay=1.0, retry_max_delay=4.0)
    # each re-read through the API takes 100 ms, so the 10-slot queue must fill up
    emu.faults.latency = 0.1
    for job_id in ids:
        for status in STEPS:
            emu.set_status(job_id, status)
    assert len(emu.webhooks.planned) == 1000
    wait_for(lambda: Counter(svc.ledger.job_states().values())["archived"] == JOBS,
             timeout=90, what="every job archived")
    assert emu.webhooks.wait_idle(60)

    attempts = emu.webhooks.attempts()
    answered = {a.msg_id for a in attempts if a.http_status in (200, 202)}
    assert answered == {d.msg_id for d in emu.webhooks.planned}   # nothing given up
    assert sum(1 for a in attempts if a.http_status == 503) > 0      # backpressure happened
    assert svc.queue.high_water <= QUEUE
    assert len(svc.receiver.seen) <= svc.serve_settings.dedupe_size

    # exactly once: one result read and one download per artifact, one archived job each
    results = Counter(r.path for r in emu.requests.snapshot() if r.route == "result")
    downloads = Counter((r.path, r.query["path"]) for r in emu.requests.snapshot()
                        if r.route == "artifact")
    assert len(results) == JOBS and set(results.values()) == {1}
    assert len(downloads) == JOBS and set(downloads.values()) == {1}
    def processed():  # the hook runs just after the ledger write
        m = metric_samples(svc.metrics.render()[0].decode())
        return m[("archiver_jobs_processed_total", (("state", "archived"),))]
    wait_for(lambda: processed() >= JOBS)
    assert processed() == JOBS
    m = metric_samples(svc.metrics.render()[0].decode())
    assert m[("archiver_webhook_deliveries_rejected_total", (("reason", "queue_full"),))] > 0
