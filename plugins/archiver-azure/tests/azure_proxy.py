"""A small reverse proxy in front of Azurite: records what the client sends, and stands in
for what Azurite lacks.

Azurite's immutability and legal-hold handlers are stubs (501) and it ignores the policy
headers on Put Blob / Put Block List. With ``immutability=True`` the proxy remembers the
policy and hold each blob was created or later set with, answers Set Blob Immutability
Policy / Set Blob Legal Hold itself, and adds the ``x-ms-immutability-policy-*`` and
``x-ms-legal-hold`` headers to that blob's properties, as Azure would; with
``drop_on_create`` it forgets what the creating request asked for (a service that did
not apply it), so the sink's re-apply path runs. Container properties then report
version-level immutability as enabled. Shared Key signatures cover the path, not the
host, so requests signed for the proxy are valid for Azurite.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

POLICY_UNTIL, POLICY_MODE, LEGAL_HOLD = ("x-ms-immutability-policy-until-date",
                                         "x-ms-immutability-policy-mode", "x-ms-legal-hold")


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    size: int

    @property
    def comp(self) -> str:
        return self.query.get("comp", "")


@dataclass
class Proxy:
    upstream_port: int
    immutability: bool = False
    drop_on_create: bool = False
    #: ``fault(seen) -> (status, headers) | "drop" | None``: answer a request instead of
    #: Azurite, or drop the connection without an answer
    fault: Callable[[Seen], object] | None = None
    seen: list[Seen] = field(default_factory=list)
    policies: dict[str, dict[str, str]] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def account_url(self, account: str) -> str:
        return f"http://127.0.0.1:{self.port}/{account}"

    def start(self) -> Proxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def requests(self, method: str | None = None, comp: str | None = None) -> list[Seen]:
        return [s for s in self.seen if (method is None or s.method == method)
                and (comp is None or s.comp == comp)]

    # ------------------------------------------------------------------ handling
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        seen = Seen(h.command, parts.path, query, {k.lower(): v for k, v in h.headers.items()},
                    len(body))
        self.seen.append(seen)
        answer = self.fault(seen) if self.fault else None
        if answer == "drop":  # as if the server died mid-request: no answer at all
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if answer is None and self.immutability:
            answer = self._immutability_call(seen)
        if answer is not None:
            status, headers = answer
            self._reply(h, status, headers, b"")
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() != "host"}
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = {k: v for k, v in resp.getheaders()
                   if k.lower() not in ("transfer-encoding", "connection", "content-length")}
            if h.command == "HEAD":
                out["Content-Length"] = resp.getheader("Content-Length", "0")
        finally:
            conn.close()
        if self.immutability:
            self._remember_create(seen, resp.status)
            out.update(self._decorate(seen))
        self._reply(h, resp.status, out, data, head=h.command == "HEAD")

    @staticmethod
    def _reply(h, status: int, headers: dict[str, str], data: bytes, head: bool = False):
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if not head:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if data and not head:
            h.wfile.write(data)

    def _immutability_call(self, seen: Seen) -> tuple[int, dict[str, str]] | None:
        if seen.method == "PUT" and seen.comp == "immutabilityPolicies":
            policy = self.policies.setdefault(seen.path, {})
            policy[POLICY_UNTIL] = seen.headers.get(POLICY_UNTIL, "")
            policy[POLICY_MODE] = seen.headers.get(POLICY_MODE, "Unlocked")
            return 200, {POLICY_UNTIL: policy[POLICY_UNTIL], POLICY_MODE: policy[POLICY_MODE],
                         "Content-Length": "0"}
        if seen.method == "PUT" and seen.comp == "legalhold":
            self.policies.setdefault(seen.path, {})[LEGAL_HOLD] = seen.headers.get(LEGAL_HOLD,
                                                                                  "false")
            return 200, {LEGAL_HOLD: seen.headers.get(LEGAL_HOLD, "false"),
                         "Content-Length": "0"}
        return None

    def _remember_create(self, seen: Seen, status: int) -> None:
        creating = seen.method == "PUT" and (seen.comp in ("", "blocklist")) and \
            "restype" not in seen.query
        if not creating or status != 201 or self.drop_on_create:
            return
        policy = {k: seen.headers[k] for k in (POLICY_UNTIL, POLICY_MODE, LEGAL_HOLD)
                  if k in seen.headers}
        if policy:
            self.policies[seen.path] = policy

    def _decorate(self, seen: Seen) -> dict[str, str]:
        if seen.query.get("restype") == "container" and not seen.comp:
            return {"x-ms-immutable-storage-with-versioning-enabled": "true"}
        if seen.method in ("HEAD", "GET") and not seen.comp and seen.path in self.policies:
            return dict(self.policies[seen.path])
        return {}
