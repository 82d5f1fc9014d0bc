"""The emulator's webhooks (signed, retried, duplicated, dropped, forged, out of order) and
job progression over time, received by a plain HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from archiver.testing.emulator import Emulator


class Receiver(ThreadingHTTPServer):
    """Records every POST; answers the statuses in ``answers`` first, then 200."""

    daemon_threads = True

    def __init__(self, answers=()):
        self.got: list[dict] = []
        self.answers = list(answers)
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.got.append({"headers": {k.lower(): v for k, v in self.headers.items()},
                                    "body": body, "path": self.path})
            status = self.server.answers.pop(0) if self.server.answers else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def emu():
    with Emulator(seed=7) as e:
        e.add_project(project_id="p1")
        yield e


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.shutdown()
    r.server_close()


def verify(secret: str, delivery: dict) -> bool:
    """An independent Standard Webhooks check: key = the secret's UTF-8 bytes."""
    h = delivery["headers"]
    signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + delivery["body"]
    want = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    return f"v1,{want}" in h["webhook-signature"].split()


def test_status_change_sends_a_signed_delivery(emu, receiver):
    job = emu.add_job("p1", status="processing")["id"]
    emu.configure_webhooks(receiver.url)
    emu.set_status(job, "completed")
    assert emu.webhooks.wait_idle(10)
    [d] = receiver.got
    assert d["path"] == "/hook" and d["headers"]["content-type"] == "application/json"
    assert d["headers"]["webhook-id"].startswith("msg_")
    assert abs(int(d["headers"]["webhook-timestamp"]) - time.time()) < 60
    secret = emu.webhook_secret(job)
    assert secret.startswith("wss_") and secret == emu.webhook_secret(job)
    assert verify(secret, d)
    assert not verify(emu.webhook_secret("job_other"), d)
    payload = json.loads(d["body"])
    assert payload["type"] == "job.status_changed"
    assert payload["data"]["job"] == {**emu.job(job), "updatedAt": payload["data"]["job"][
        "updatedAt"]}
    assert payload["data"]["job"]["status"] == "completed"


def test_no_delivery_without_a_change_or_url(emu, receiver):
    job = emu.add_job("p1", status="processing")["id"]
    emu.set_status(job, "completed")                # not configured yet
    emu.configure_webhooks(receiver.url, secret="wss_shared")
    emu.set_status(job, "completed")                # no change
    emu.expire(job)
    assert emu.webhooks.wait_idle(10)
    [d] = receiver.got
    assert json.loads(d["body"])["data"]["job"]["status"] == "expired"
    assert verify("wss_shared", d)


def test_failed_deliveries_are_retried_with_the_same_id(emu):
    r = Receiver(answers=[500, 503])
    try:
        job = emu.add_job("p1", status="processing")["id"]
        emu.configure_webhooks(r.url, retry_delay=0.01, honour_retry_after=False)
        emu.set_status(job, "completed")
        assert emu.webhooks.wait_idle(10)
        assert len(r.got) == 3 and len({d["headers"]["webhook-id"] for d in r.got}) == 1
        assert all(verify(emu.webhook_secret(job), d) for d in r.got)
        assert [a.http_status for a in emu.webhooks.attempts()] == [500, 503, 200]
        assert [a.attempt for a in emu.webhooks.attempts()] == [1, 2, 3]
    finally:
        r.shutdown()
        r.server_close()


def test_gives_up_after_max_attempts_and_survives_a_dead_url(emu):
    job = emu.add_job("p1", status="processing")["id"]
    emu.configure_webhooks("http://127.0.0.1:9/nothing", max_attempts=3, retry_delay=0.01)
    emu.set_status(job, "completed")
    assert emu.webhooks.wait_idle(10)
    attempts = emu.webhooks.attempts()
    assert len(attempts) == 3 and all(a.http_status is None and a.error for a in attempts)


def test_drop_duplicate_forge_knobs(emu, receiver):
    jobs = [emu.add_job("p1", status="processing")["id"] for _ in range(40)]
    emu.configure_webhooks(receiver.url, drop=0.3, duplicate=0.3, forge=0.3, seed=1)
    for job in jobs:
        emu.set_status(job, "completed")
    assert emu.webhooks.wait_idle(10)
    kinds = Counter(d.kind for d in emu.webhooks.planned)
    assert kinds["dropped"] and kinds["duplicate"] and kinds["forged"] and kinds["event"]
    assert len(receiver.got) == kinds["event"] + kinds["duplicate"] + kinds["forged"]
    by_id = Counter(d["headers"]["webhook-id"] for d in receiver.got)
    dropped = {d.msg_id for d in emu.webhooks.planned if d.kind == "dropped"}
    assert not dropped & set(by_id)
    assert sum(1 for n in by_id.values() if n == 2) == kinds["duplicate"]
    for d in receiver.got:
        job = json.loads(d["body"])["data"]["job"]["id"]
        forged = d["headers"]["webhook-id"].startswith("msg_forged_")
        assert verify(emu.webhook_secret(job), d) is not forged


def test_jitter_delivers_out_of_order(emu, receiver):
    jobs = [emu.add_job("p1", status="processing")["id"] for _ in range(20)]
    emu.configure_webhooks(receiver.url, jitter=0.3, workers=1, seed=3)
    for job in jobs:
        emu.set_status(job, "completed")
    assert emu.webhooks.wait_idle(10)
    planned = [d.msg_id for d in emu.webhooks.planned]
    arrived = [d["headers"]["webhook-id"] for d in receiver.got]
    assert sorted(arrived) == sorted(planned) and arrived != planned


def test_timeline_moves_jobs_and_expires_them(emu, receiver):
    job = emu.add_job("p1", status="provisioning")["id"]
    emu.configure_webhooks(receiver.url)
    emu.progress(job, [(0.05, "processing"), (0.1, "completed"), (0.15, "expired")])
    assert emu.timeline.wait_idle(10) and emu.webhooks.wait_idle(10)
    statuses = [json.loads(d["body"])["data"]["job"]["status"] for d in receiver.got]
    assert sorted(statuses) == ["completed", "expired", "processing"]
    r = requests.get(f"{emu.base_url}/jobs/{job}",
                     headers={"Authorization": f"Bearer {emu.api_key}"}, timeout=5)
    assert r.status_code == 410
    with pytest.raises(ValueError):
        emu.progress(job, [(0, "nonsense")])
    with pytest.raises(KeyError):
        emu.progress("job_nope", [(0, "completed")])


def test_progression_and_webhooks_go_on_while_the_api_is_down(emu, receiver):
    job = emu.add_job("p1", status="processing")["id"]
    emu.configure_webhooks(receiver.url)
    emu.stop()
    emu.progress(job, [(0.01, "completed")])
    assert emu.timeline.wait_idle(10) and emu.webhooks.wait_idle(10)
    assert len(receiver.got) == 1
    emu.start()
    assert requests.get(f"{emu.base_url}/jobs/{job}/result", timeout=5,
                        headers={"Authorization": f"Bearer {emu.api_key}"}).status_code == 200
