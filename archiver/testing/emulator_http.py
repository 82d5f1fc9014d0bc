"""HTTP side of the Plangrep emulator: servers, handlers, fault knobs and the request log.

Standard library only. Both servers bind 127.0.0.1, speak HTTP/1.1 with keep-alive, run one
daemon thread per connection and disable Nagle (without that every keep-alive response
would wait ~40 ms for a delayed ACK). The API state and its answers live in
:class:`archiver.testing.emulator.Emulator`; this module only moves bytes.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from ..httpserver import LocalHTTPServer
from .emulator_data import BLOCK, Artifact

if TYPE_CHECKING:  # pragma: no cover
    from .emulator import Emulator

SLOW_CHUNK = 64 << 10  # body write size while Faults.slow_body is set
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


@dataclass
class Faults:
    """Fault knobs; set any of them at any time from any thread.

    Counters (``*_n``) are consumed one per affected response. ``rate_limit_n`` and
    ``error_5xx_n`` hit any API request (before authentication), never the storage server.
    The body faults hit artifact GET bodies wherever they are served (the API, or the storage
    server when ``redirect_artifacts`` is set), optionally only for ``fault_paths``.
    ``stall_mid_body_n``: send half the body, then nothing more until the emulator stops
    (a peer that went silent with the connection open); ``stalled`` is set meanwhile.
    """

    rate_limit_n: int = 0
    rate_limit_retry_after: str | int | None = "1"  # None: 429 without Retry-After
    error_5xx_n: int = 0
    drop_mid_body_n: int = 0
    stall_mid_body_n: int = 0
    wrong_length_n: int = 0
    slow_body: float = 0.0
    latency: float = 0.0
    # extra seconds before answering these API routes (``{"result": 120}``): a server
    # that accepted the request and went silent before its headers
    route_latency: dict[str, float] = field(default_factory=dict)
    redirect_artifacts: bool = False
    chunked: bool = False
    fault_paths: set[str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    stalled: threading.Event = field(default_factory=threading.Event, repr=False,
                                     compare=False)

    def take(self, name: str, path: str | None = None) -> bool:
        """Atomically consume one unit of counter ``name``; True if this response is hit."""
        with self._lock:
            if path is not None and self.fault_paths is not None and path not in self.fault_paths:
                return False
            n = getattr(self, name)
            if n > 0:
                setattr(self, name, n - 1)
                return True
            return False

    def reset(self) -> None:
        with self._lock:
            for name, f in self.__dataclass_fields__.items():
                if name == "stalled":
                    self.stalled.clear()
                elif name != "_lock":
                    setattr(self, name, f.default)


@dataclass(frozen=True)
class RequestRecord:
    """One answered request. ``headers`` never contains Authorization."""

    method: str
    path: str          # URL path as sent (still percent-encoded)
    query: dict        # parsed once: name -> first value (decoded)
    status: int
    headers: dict
    route: str = "unknown"  # projects|jobs|job|result|artifact|project_artifact|storage|unknown
    at: float = field(default_factory=time.time)  # when it was answered (rates, pauses)


class RequestLog(list):
    """A list of :class:`RequestRecord`, appended to by server threads under a lock."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            super().append(record)

    def clear(self) -> None:
        with self._lock:
            super().clear()

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self)


class EmulatorServer(LocalHTTPServer):
    def __init__(self, port: int, handler: type, emulator: Emulator):
        self.emulator = emulator
        super().__init__(("127.0.0.1", port), handler)

    def handle_error(self, request, client_address) -> None:
        if self.stopping.is_set() or isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "plangrep-emulator/1.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are dropped after this
    server: EmulatorServer

    route = "unknown"

    # ------------------------------------------------------------------ plumbing
    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args) -> None:
        if self.server.emulator.verbose:  # the request line never holds the key
            sys.stderr.write(f"emulator {self.address_string()} - {format % args}\n")

    def do_GET(self) -> None:
        self._run(head=False)

    def do_HEAD(self) -> None:
        self._run(head=True)

    def _not_allowed(self) -> None:
        self._run(head=False, allowed=False)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_allowed

    def _run(self, head: bool, allowed: bool = True) -> None:
        self.route = "unknown"
        self._url_path, self._query = self.path, {}
        try:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self.close_connection = True
                return self.error(400, "invalid_request", "Malformed Content-Length.")
            if length > 0:  # drain a body nobody asked for, to keep the connection usable
                self.rfile.read(length)
            # The request line arrived as latin-1; recover raw UTF-8 if a client sent it.
            target = self.path.encode("latin-1", "replace").decode("utf-8", "replace")
            split = urlsplit(target)
            query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
            self._url_path, self._query = split.path, query
            faults = self.server.emulator.faults
            latency = faults.latency
            if faults.route_latency:
                route = match_api_route(split.path, self.server.emulator.api_prefix)[0]
                latency += faults.route_latency.get(route, 0.0)
            if latency > 0:
                self.server.stopping.wait(latency)
            self.dispatch(split.path, query, head, allowed)
        except _DISCONNECTS:
            self.close_connection = True

    def start_response(self, status: int, headers: dict[str, str]) -> None:
        """Record the request (before any byte leaves), then send status and headers."""
        kept = {k: v for k, v in self.headers.items()
                if k.lower() not in ("authorization", "proxy-authorization")}
        self.server.emulator.requests.append(RequestRecord(
            self.command, self._url_path, self._query, status, kept, self.route))
        self.send_response(status)
        for name, value in headers.items():
            value = str(value).replace("\r", " ").replace("\n", " ")
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:  # e.g. a hostile Content-Disposition: send raw UTF-8
                value = value.encode("utf-8").decode("latin-1")
            self.send_header(name, value)
        self.end_headers()

    def send_body(self, status: int, body: bytes, content_type: str, head: bool,
                  extra: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": content_type, "Content-Length": str(len(body)),
                   **(extra or {})}
        self.start_response(status, headers)
        if not head and body:
            self.wfile.write(body)

    def error(self, status: int, code: str, message: str,
              extra: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        self.send_body(status, body, "application/json", self.command == "HEAD", extra)

    def send_artifact(self, art: Artifact, head: bool) -> None:
        faults = self.server.emulator.faults
        length = art.served_length()
        drop = not head and faults.take("drop_mid_body_n", art.path)
        stall = not head and not drop and faults.take("stall_mid_body_n", art.path)
        wrong = not head and not drop and faults.take("wrong_length_n", art.path)
        chunked = faults.chunked and not wrong
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Disposition": art.content_disposition()}
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Content-Length"] = str(length + (max(1024, length // 10) if wrong else 0))
        self.start_response(200, headers)
        if head:
            return
        if drop or wrong or stall:
            self.close_connection = True
        limit = length // 2 if drop or stall else length
        slow = faults.slow_body
        write, sent = self.wfile.write, 0
        for piece in art.iter_served(SLOW_CHUNK if slow > 0 else BLOCK):
            if sent >= limit:
                break
            if len(piece) > limit - sent:
                piece = piece[:limit - sent]
            if sent and slow > 0 and self.server.stopping.wait(slow):
                self.close_connection = True
                return
            if chunked:
                write(b"%x\r\n" % len(piece))
                write(piece)
                write(b"\r\n")
            else:
                write(piece)
            sent += len(piece)
        if stall:
            self.wfile.flush()
            faults.stalled.set()
            self.server.stopping.wait()  # silent, connection open, until the emulator stops
            return
        if chunked and not drop:
            write(b"0\r\n\r\n")

    def dispatch(self, path: str, query: dict, head: bool, allowed: bool) -> None:
        raise NotImplementedError


def match_api_route(path: str, prefix: str) -> tuple[str, dict[str, str]]:
    """Map an API URL path to (route, params); ``unknown`` when nothing matches."""
    if not path.startswith(prefix + "/"):
        return "unknown", {}
    parts = [unquote(p) for p in path[len(prefix) + 1:].split("/")]
    if parts == ["projects"]:
        return "projects", {}
    if len(parts) == 3 and parts[0] == "projects" and parts[1]:
        if parts[2] == "jobs":
            return "jobs", {"project": parts[1]}
        if parts[2] == "artifact":
            return "project_artifact", {"project": parts[1]}
    if parts[0] == "jobs" and len(parts) in (2, 3) and parts[1]:
        if len(parts) == 2:
            return "job", {"job": parts[1]}
        if parts[2] in ("result", "artifact"):
            return parts[2], {"job": parts[1]}
    return "unknown", {}


class ApiHandler(_Handler):
    def dispatch(self, path: str, query: dict, head: bool, allowed: bool) -> None:
        emu = self.server.emulator
        faults = emu.faults
        self.route, params = match_api_route(path, emu.api_prefix)
        if not allowed:
            return self.error(405, "method_not_allowed", f"{self.command} is not supported",
                              {"Allow": "GET, HEAD"})
        if faults.take("rate_limit_n"):
            retry_after = faults.rate_limit_retry_after
            extra = {} if retry_after is None else {"Retry-After": str(retry_after)}
            return self.error(429, "rate_limited", "Too many requests; slow down.", extra)
        if faults.take("error_5xx_n"):
            return self.error(503, "internal", "The service is temporarily unavailable.")
        scopes = emu.scopes_for(self.headers.get("Authorization"))
        if scopes is None:
            return self.error(401, "unauthorized", "Missing, invalid, revoked or expired API key.",
                              {"WWW-Authenticate": 'Bearer realm="plangrep"'})
        if self.route == "unknown":
            return self.error(404, "not_found", "No such endpoint.")
        need = "artifacts:read" if self.route in ("artifact", "project_artifact") else "jobs:read"
        if need not in scopes:
            return self.error(403, "forbidden", f"The API key lacks the {need} scope.")
        answer = emu.resolve(self.route, params, query)
        kind = answer[0]
        if kind == "error":
            return self.error(*answer[1:])
        if kind == "json":
            return self.send_body(answer[1], answer[2], "application/json", head)
        art: Artifact = answer[1]
        if faults.redirect_artifacts:
            return self.send_body(302, b"", "application/octet-stream", head,
                                  {"Location": emu.presign(art)})
        self.send_artifact(art, head)


class StorageHandler(_Handler):
    """The "other host" behind pre-signed URLs: refuses (and records) an Authorization."""

    def dispatch(self, path: str, query: dict, head: bool, allowed: bool) -> None:
        emu = self.server.emulator
        self.route = "storage"
        if not allowed:
            return self.error(405, "method_not_allowed", f"{self.command} is not supported",
                              {"Allow": "GET, HEAD"})
        if self.headers.get("Authorization") is not None:
            emu.storage_saw_authorization = True
            return self.error(400, "authorization_not_allowed",
                              "Pre-signed URLs must be fetched without an Authorization header.")
        answer = emu.resolve_storage(path, query)
        if answer[0] == "error":
            return self.error(*answer[1:])
        if answer[0] == "json":
            return self.send_body(answer[1], answer[2], "application/json", head)
        self.send_artifact(answer[1], head)
