"""The HTTP side of ``archiver serve``: ``/healthz``, ``/metrics`` and the webhook endpoint.

Standard library ``ThreadingHTTPServer`` (one thread per connection, HTTP/1.1 keep-alive,
Nagle off so that small answers are not held back by delayed ACKs), bound to 127.0.0.1
unless ``serve.host`` says otherwise: put a TLS-terminating proxy in front of it.

Memory is bounded: at most ``serve.max_connections`` connections are served at once (more
get an immediate 503 and are closed), and a body is read only when its Content-Length is
at most ``serve.max_body_bytes`` (413 otherwise; a chunked body gets 411). The webhook
answer is computed from the body alone (the work is queued), so it comes back in
milliseconds.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..httpserver import LocalHTTPServer

if TYPE_CHECKING:
    from .metrics import ServiceMetrics
    from .webhooks import WebhookReceiver

log = logging.getLogger("archiver.service.http")

_DRAIN_LIMIT = 1 << 20  # bytes of a refused body read (and dropped) before closing
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
_BUSY_BODY = b'{"status": "rejected", "reason": "busy"}\n'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
         b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
         % (len(_BUSY_BODY), _BUSY_BODY))


class ServiceServer(LocalHTTPServer):
    """The server; ``receiver``, ``metrics`` and ``health`` are what the handler answers from."""

    def __init__(self, host: str, port: int, *, webhook_path: str,
                 receiver: WebhookReceiver | None, metrics: ServiceMetrics | None,
                 health: Callable[[], tuple[bool, dict]], max_body_bytes: int,
                 max_connections: int = 64):
        self.webhook_path = webhook_path
        self.receiver, self.metrics, self.health = receiver, metrics, health
        self.max_body_bytes = max_body_bytes
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.server_address[0]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.server_address[1]}"

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):  # over max_connections: 503 at once
            try:
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        log.exception("HTTP request from %s failed", client_address[0])

    def start(self) -> ServiceServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"archiver-http:{self.server_address[1]}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut open keep-alive connections, close the socket."""
        if self._thread is not None:
            super().stop()
            self._thread.join(timeout=5)
            self._thread = None
        else:
            self.server_close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "archiver"
    sys_version = ""
    timeout = 15  # a client that stalls mid-request is dropped after this
    server: ServiceServer

    def log_message(self, format: str, *args) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              extra: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except _DISCONNECTS:
            self.close_connection = True

    def _json(self, status: int, obj: dict, extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode() + b"\n", extra=extra)

    def _route(self) -> str:
        return urlsplit(self.path).path

    def do_GET(self) -> None:
        path = self._route()
        if path == "/healthz":
            ok, data = self.server.health()
            return self._json(200 if ok else 503, data)
        if path == "/metrics" and self.server.metrics is not None:
            body, ctype = self.server.metrics.render()
            return self._send(200, body, ctype)
        self._json(404, {"error": "not found"})

    do_HEAD = do_GET

    def do_POST(self) -> None:
        if self._route() != self.server.webhook_path or self.server.receiver is None:
            self._drain(self._length() or 0)
            return self._json(404, {"error": "not found"})
        self._webhook()

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._json(405, {"error": "method not allowed"}, {"Allow": "GET, HEAD, POST"})

    do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_allowed

    def _length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is None or not raw.strip().isdigit():
            return None
        return int(raw)

    def _drain(self, n: int, timeout: float | None = None) -> None:
        """Read and drop up to ``n`` bytes, so the client sees our answer, not a reset."""
        left = min(n, _DRAIN_LIMIT)
        try:
            if timeout is not None:
                self.connection.settimeout(timeout)
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except (OSError, ValueError):
            self.close_connection = True
        if n > _DRAIN_LIMIT:
            self.close_connection = True

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        receiver = self.server.receiver
        verdict = receiver.reject(status, reason, detail)
        self.close_connection = True
        self._json(status, verdict.body())

    def _webhook(self) -> None:
        receiver = self.server.receiver
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._refuse(411, "no_length", "chunked bodies are not accepted")
        length = self._length()
        if length is None:
            return self._refuse(411, "no_length", "no valid Content-Length")
        limit = self.server.max_body_bytes
        if length > limit:
            # answer first (nothing of the body is kept), then swallow what is already on
            # its way for a moment, so that closing does not reset the answer away
            self._refuse(413, "too_large", f"{length} bytes > serve.max_body_bytes {limit}")
            return self._drain(length, timeout=1.0)
        try:
            body = self.rfile.read(length)
        except (OSError, ValueError):
            self.close_connection = True
            return
        if len(body) != length:
            self.close_connection = True
            return  # the client went away mid-body: nobody to answer
        verdict = receiver.handle(self.headers, body)
        extra = {"Retry-After": "1"} if verdict.status == 503 else None
        self._json(verdict.status, verdict.body(), extra)
