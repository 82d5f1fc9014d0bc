"""A real HTTP receiver on 127.0.0.1 that records what the notifier POSTs."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from archiver.service.webhooks import key_candidates, signature

# 32 bytes, base64: a Standard Webhooks secret for tests.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw+2Gl0Y3Y2Zw="
SLACK_TOKEN = "T0SECRET/B0SECRET/xoxbSECRETtoken"


def verify(rec) -> bool:
    """Checked with the core's own Standard Webhooks verification (archiver serve's
    receiver), so the two implementations cannot drift apart unnoticed."""
    import base64
    h = {k.lower(): v for k, v in rec.headers.items()}
    want = signature(key_candidates(SECRET)[0], h["webhook-id"], h["webhook-timestamp"],
                     rec.body)
    return h["webhook-signature"] == "v1," + base64.b64encode(want).decode()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)


class Receiver:
    """``status``: the answer; ``delay``: seconds before answering; ``gate``: an Event
    every request waits on (queue tests)."""

    def __init__(self, status: int = 200, delay: float = 0.0):
        self.status, self.delay = status, delay
        self.gate: threading.Event | None = None
        self.received: list[Received] = []
        self.hits = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer._lock:
                    outer.hits += 1
                if outer.gate is not None:
                    outer.gate.wait(30)
                if outer.delay:
                    time.sleep(outer.delay)
                try:
                    self.send_response(outer.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    return  # the client gave up (timeout test)
                if outer.status < 300:
                    with outer._lock:
                        outer.received.append(Received(self.path, dict(self.headers), body))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, n: int, timeout: float = 10.0, hits: bool = False) -> list[Received]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if (self.hits if hits else len(self.received)) >= n:
                break
            time.sleep(0.01)
        return list(self.received)
