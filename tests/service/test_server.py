"""The HTTP server and receiver on their own (no watch loop drains the queue):
backpressure, coalescing, limits, health, routing."""

from __future__ import annotations

import socket

import pytest
import requests
from service_helpers import SECRET, payload, wait_for

from archiver.config import ServeSettings
from archiver.service.server import ServiceServer
from archiver.service.webhooks import JobQueue, WebhookReceiver
from archiver.testing.emulator_webhooks import signed_headers


@pytest.fixture
def make_server():
    servers = []

    def make(health=(True, {"status": "ok"}), **settings):
        s = ServeSettings(port=0, secrets={"default": SECRET}, max_body_bytes=4096,
                          **settings)
        queue = JobQueue(s.queue_size)
        receiver = WebhookReceiver(s, queue)
        server = ServiceServer(s.host, s.port, webhook_path=s.path, receiver=receiver,
                               metrics=None, health=lambda: health,
                               max_body_bytes=s.max_body_bytes,
                               max_connections=s.max_connections).start()
        servers.append(server)
        return server, receiver, queue

    yield make
    for server in servers:
        server.stop()


def post(server, job_id, msg_id, **kw):
    body = payload(job_id)
    return requests.post(server.url + "/webhooks/plangrep", data=body,
                         headers=signed_headers(SECRET, msg_id, body), timeout=10, **kw)


def test_full_queue_answers_503_and_the_retry_is_accepted_later(make_server):
    server, _, queue = make_server(queue_size=2)
    assert post(server, "job_a", "m1").status_code == 202
    assert post(server, "job_b", "m2").status_code == 202
    full = post(server, "job_c", "m3")
    assert full.status_code == 503 and full.headers["Retry-After"] == "1"
    assert full.json()["reason"] == "queue_full"
    assert queue.high_water == 2
    assert queue.take() == ["job_a", "job_b"]
    assert post(server, "job_c", "m3").status_code == 202    # same id: not remembered on 503
    assert post(server, "job_c", "m3").json()["reason"] == "duplicate"


def test_deliveries_for_a_queued_job_coalesce(make_server):
    server, _, queue = make_server(queue_size=2)
    assert post(server, "job_a", "m1").status_code == 202
    assert post(server, "job_a", "m2").status_code == 202    # already waiting: no new slot
    assert len(queue) == 1
    assert post(server, "job_b", "m3").status_code == 202
    assert queue.take() == ["job_a", "job_b"]


def test_shutting_down_answers_503(make_server):
    server, receiver, queue = make_server()
    receiver.close()
    resp = post(server, "job_a", "m1")
    assert (resp.status_code, resp.json()["reason"]) == (503, "shutting_down")
    assert len(queue) == 0


def test_health_routes_and_methods(make_server):
    server, *_ = make_server()
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    down, *_ = make_server(health=(False, {"status": "stopping"}))
    assert requests.get(down.url + "/healthz", timeout=5).status_code == 503
    assert requests.get(server.url + "/metrics", timeout=5).status_code == 404  # no metrics
    assert requests.get(server.url + "/nope", timeout=5).status_code == 404
    assert requests.post(server.url + "/other", data=b"{}", timeout=5).status_code == 404
    assert requests.put(server.url + "/webhooks/plangrep", data=b"{}",
                        timeout=5).status_code == 405


def test_chunked_body_is_refused_411(make_server):
    server, _, queue = make_server()
    body = payload("job_a")
    resp = requests.post(server.url + "/webhooks/plangrep", data=iter([body]),
                         headers=signed_headers(SECRET, "m1", body), timeout=10)
    assert (resp.status_code, resp.json()["reason"]) == (411, "no_length")
    assert len(queue) == 0


def test_oversized_body_is_answered_without_reading_it(make_server):
    server, _, queue = make_server()
    with socket.create_connection(server.server_address[:2], timeout=10) as s:
        s.sendall(b"POST /webhooks/plangrep HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 100000000000\r\n\r\n{")
        answer = b""
        while chunk := s.recv(4096):       # the server closes after answering
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"too_large"' in answer and len(queue) == 0


def test_connections_beyond_the_cap_get_503(make_server):
    server, *_ = make_server(max_connections=1)
    idle = socket.create_connection(server.server_address[:2], timeout=10)
    try:
        wait_for(lambda: len(server._conns) == 1)
        resp = requests.get(server.url + "/healthz", timeout=5)
        assert resp.status_code == 503 and resp.json()["reason"] == "busy"
    finally:
        idle.close()
    wait_for(lambda: not server._conns)
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
