"""Delivery against real receivers on 127.0.0.1: signatures the core's own webhook
verifier accepts, retries, dead endpoints named in clear errors, a bounded queue and a
bounded exit flush."""

from __future__ import annotations

import logging
import threading
import time

from archiver_notify.config import NotifyConfig
from archiver_notify.plugin import Notifier, archiver_job_done
from notify_receiver import SECRET, SLACK_TOKEN, verify

from archiver.model import ArtifactResult, Job
from archiver.testing.servers import free_port

JOB = Job("job_1", "proj_1", "completed", {"expiresAt": "2030-01-01T00:00:00Z"})


def notifier(*endpoints: dict, **kw) -> Notifier:
    return Notifier(NotifyConfig.model_validate({"endpoints": list(endpoints), **kw}))


def test_signed_webhook_slack_and_teams_shapes(receiver):
    hook, slack, teams = receiver(), receiver(), receiver()
    notifier({"name": "hook", "url": hook.url + "/in", "secret": SECRET},
             {"name": "slack", "url": f"{slack.url}/services/{SLACK_TOKEN}", "format": "slack"},
             {"name": "teams", "url": teams.url + "/wf", "format": "teams"})
    results = [ArtifactResult(job_id="job_1", path="a.json", size=10),
               ArtifactResult(job_id="job_1", path="b.png", size=5, errors={"primary": "disk full"})]
    archiver_job_done(job=JOB, state="incomplete", results=results)
    (h,) = hook.wait_for(1)
    assert verify(h) and h.headers["webhook-id"].startswith("msg_")
    assert h.json["type"] == "job.incomplete"
    d = h.json["data"]
    assert (d["job_id"], d["project_id"], d["state"], d["failed"]) == ("job_1", "proj_1",
                                                                      "incomplete", 1)
    assert d["problems"] == ["b.png: disk full"]
    (s,) = slack.wait_for(1)
    assert s.path == f"/services/{SLACK_TOKEN}" and "webhook-signature" not in s.headers
    assert "job_1" in s.json["text"] and "INCOMPLETE" in s.json["text"]
    assert s.json["blocks"][0]["type"] == "section"
    (t,) = teams.wait_for(1)
    card = t.json["attachments"][0]
    assert t.json["type"] == "message"
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["type"] == "AdaptiveCard"
    assert {"title": "Job", "value": "job_1"} in card["content"]["body"][1]["facts"]


def test_events_and_projects_filter(receiver):
    lost_only, other_project = receiver(), receiver()
    notifier({"name": "a", "url": lost_only.url, "events": ["lost"]},
             {"name": "b", "url": other_project.url, "projects": ["proj_2"]})
    archiver_job_done(job=JOB, state="archived", results=[])
    archiver_job_done(job=JOB, state="lost", results=[])
    assert [r.json["type"] for r in lost_only.wait_for(1)] == ["job.lost"]
    time.sleep(0.2)
    assert other_project.hits == 0


def test_500_is_retried_then_given_up_naming_the_endpoint(receiver, caplog):
    failing = receiver(status=500)
    n = notifier({"name": "ops", "url": f"{failing.url}/services/{SLACK_TOKEN}",
                  "format": "slack", "attempts": 3, "backoff": 0.01})
    with caplog.at_level(logging.DEBUG, logger="archiver.notify"):
        archiver_job_done(job=JOB, state="archived", results=[])
        assert n.flush(timeout=10) == 0
    assert failing.hits == 3
    text = caplog.text
    assert f"notify endpoint ops ({failing.url}): gave up on archived of job job_1 after " \
           "3 attempt(s): HTTP 500" in text
    assert SLACK_TOKEN not in text and "attempt 1 failed (HTTP 500" in text


def test_a_4xx_is_not_retried(receiver, caplog):
    r = receiver(status=404)
    n = notifier({"name": "gone", "url": r.url, "attempts": 5, "backoff": 0.01})
    archiver_job_done(job=JOB, state="lost", results=[])
    n.flush(timeout=5)
    assert r.hits == 1 and "gone (" in caplog.text and "HTTP 404" in caplog.text


def test_a_timeout_and_an_unreachable_endpoint_are_clear_errors(receiver, caplog):
    slow = receiver(delay=2)
    port = free_port()  # nothing listens there
    n = notifier({"name": "slow", "url": slow.url, "timeout": 0.2, "attempts": 2,
                  "backoff": 0.01, "secret": SECRET},
                 {"name": "dead", "url": f"http://127.0.0.1:{port}/x", "attempts": 2,
                  "backoff": 0.01})
    archiver_job_done(job=JOB, state="archived", results=[])
    assert n.flush(timeout=10) == 0
    assert "slow (http://127.0.0.1:" in caplog.text and "timed out after 0.2 s" in caplog.text
    assert (f"dead (http://127.0.0.1:{port}): gave up on archived of job job_1 after 2 "
            "attempt(s): unreachable: connection refused") in caplog.text
    assert SECRET not in caplog.text and "/x" not in caplog.text


def test_a_full_queue_drops_the_oldest_and_never_blocks(receiver, caplog):
    r = receiver()
    r.gate = threading.Event()  # the receiver holds the first request
    n = notifier({"name": "q", "url": r.url, "queue_size": 2})
    jobs = [Job(f"job_{i}", "proj_1", "completed") for i in range(6)]
    archiver_job_done(job=jobs[0], state="archived", results=[])
    r.wait_for(1, hits=True)  # job_0 is in flight, the queue is empty
    started = time.monotonic()
    for job in jobs[1:]:
        archiver_job_done(job=job, state="archived", results=[])
    assert time.monotonic() - started < 0.1  # the archiving thread never waited
    queue = n.queues[0]
    assert queue.dropped == 3 and queue.pending() == 3
    assert "q (http://127.0.0.1:" in caplog.text and "dropped the oldest message" in caplog.text
    r.gate.set()
    got = [m.json["data"]["job_id"] for m in r.wait_for(3)]
    assert got == ["job_0", "job_4", "job_5"]


def test_the_exit_flush_is_bounded(receiver):
    slow = receiver(delay=5)
    n = notifier({"name": "slow", "url": slow.url, "timeout": 10},
                 flush_timeout=0.3)
    for i in range(3):
        archiver_job_done(job=Job(f"job_{i}", "p", "completed"), state="archived", results=[])
    started = time.monotonic()
    assert n.flush() == 3  # one in flight, two queued: reported, not waited for
    assert time.monotonic() - started < 1.0
