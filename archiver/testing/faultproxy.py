"""A TCP fault proxy for tests: transport failures between an HTTP client and a server.

:class:`FaultProxy` listens on 127.0.0.1 and relays HTTP/1.1 to an upstream server (moto,
fake-gcs-server, ...), request by request, keep-alive included. For each request a
``rule(request)`` may pick a :class:`Fault`:

* ``close_after=N``: relay the first ``N`` bytes of the response (status line and headers
  count), then close the connection. With ``N`` inside the header block the client sees
  a response whose headers stop half way; botocore then reports a *successful* HEAD
  without ``ContentLength``.
* ``after_continue=True``: answer ``HTTP/1.1 100 Continue`` (the status line only) and
  close, without forwarding the request. A client waiting on ``Expect: 100-continue``
  then reads the rest of the interim response from a closed socket (botocore 1.x spins
  there at 100 % CPU, forever).
* ``respond=b"HTTP/1.1 ..."``: answer with these raw bytes instead of forwarding (a
  provider that acknowledges a call and does nothing).
* ``drop=True``: close the connection without forwarding or answering.
* ``stall_after=N``: relay the first ``N`` bytes of the response, then send nothing more
  and keep the connection open until the proxy closes (a peer gone silent mid-body).
* ``stall_request_after=N``: read the request head and ``N`` bytes of its body (none of
  it is forwarded), then stop reading, connection open, until the proxy closes (an
  upload stalled mid-body: the client blocks in ``send``, or waits for an answer).

``stalled`` is set whenever a stall began (the test knows the client is stuck now).

The proxy itself answers ``Expect: 100-continue`` (``100 Continue``) and strips the header
upstream, as proxies may; ``requests`` records every request head it saw (with whether
it carried ``Expect``). Everything is bounded: sockets time out after ``timeout``
seconds, worker threads are daemons and :meth:`FaultProxy.close` (or leaving the
``with`` block) closes every connection. Plain HTTP only, no TLS.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

_MAX_HEAD = 64 << 10
_CHUNK = 64 << 10


@dataclass(frozen=True)
class Request:
    """The head of one request the proxy received (``number`` counts from 1)."""

    number: int
    method: str
    target: str
    headers: dict[str, str] = field(repr=False)  # names lower-cased

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    @property
    def expects_continue(self) -> bool:
        return self.headers.get("expect", "").lower() == "100-continue"


@dataclass(frozen=True)
class Fault:
    """What to do to one request instead of relaying it faithfully (module docstring)."""

    close_after: int | None = None
    after_continue: bool = False
    respond: bytes | None = None
    drop: bool = False
    stall_after: int | None = None
    stall_request_after: int | None = None


class _Cut(Exception):
    """The response was cut as the fault asked: close the connection."""


class FaultProxy:
    """``with FaultProxy("http://127.0.0.1:5000") as proxy:`` clients use ``proxy.url``.

    ``rule`` (settable at any time) maps a :class:`Request` to a :class:`Fault` or None.
    ``once(predicate, fault)`` is a rule applying ``fault`` to the first matching request
    only. ``applied`` lists ``(request, fault)`` for every fault carried out.
    """

    def __init__(self, upstream: str, *, timeout: float = 10.0,
                 rule: Callable[[Request], Fault | None] | None = None):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.timeout = timeout
        self.rule = rule
        self.requests: list[Request] = []
        self.applied: list[tuple[Request, Fault]] = []
        self.stalled = threading.Event()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._accepter = threading.Thread(target=self._accept, name="fault-proxy",
                                          daemon=True)
        self._accepter.start()

    # ------------------------------------------------------------------ rules
    def once(self, predicate: Callable[[Request], bool], fault: Fault,
             times: int = 1) -> None:
        """Apply ``fault`` to the first ``times`` requests matching ``predicate``."""
        left = [times]

        def rule(req: Request) -> Fault | None:
            with self._lock:
                if left[0] > 0 and predicate(req):
                    left[0] -= 1
                    return fault
            return None
        self.rule = rule

    def seen(self, method: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if method is None or r.method == method]

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            socks, self._socks = list(self._socks), set()
            threads = list(self._threads)
        for s in socks:
            _hang_up(s)
        for t in [self._accepter, *threads]:
            t.join(self.timeout)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,),
                                      name="fault-proxy-conn", daemon=True)
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _track(self, sock: socket.socket) -> socket.socket:
        sock.settimeout(self.timeout)
        with self._lock:
            self._socks.add(sock)
        if self._closed.is_set():
            _hang_up(sock)
        return sock

    # ------------------------------------------------------------------ one connection
    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        upstream: socket.socket | None = None
        cin = client.makefile("rb")
        uin = None
        try:
            while not self._closed.is_set():
                head = _read_head(cin)
                if head is None:
                    return
                req = self._request(head)
                fault = self.rule(req) if self.rule else None
                if fault is not None:
                    with self._lock:
                        self.applied.append((req, fault))
                if fault is not None and fault.stall_request_after is not None:
                    _copy(cin, min(fault.stall_request_after,
                                   int(req.headers.get("content-length") or 0)),
                          lambda data: None)
                    self._stall()
                    return
                if fault is not None and (fault.drop or fault.after_continue
                                          or fault.respond is not None):
                    if fault.after_continue:
                        client.sendall(b"HTTP/1.1 100 Continue\r\n")
                    elif fault.respond is not None:
                        _read_body(cin, req.headers, None)  # consume, then answer
                        client.sendall(fault.respond)
                        if b"connection: close" not in fault.respond.lower():
                            continue
                    return
                if upstream is None:
                    upstream = self._track(socket.create_connection(self.upstream,
                                                                    self.timeout))
                    uin = upstream.makefile("rb")
                if req.expects_continue:
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                upstream.sendall(_strip_expect(head))
                _read_body(cin, req.headers, upstream.sendall)
                if fault is not None and fault.stall_after is not None:
                    out = _Budget(client, fault.stall_after, stall=self._stall)
                else:
                    out = _Budget(client, fault.close_after if fault else None)
                keep = _relay_response(uin, out, req.method)
                if not keep or req.headers.get("connection", "").lower() == "close":
                    return
        except (_Cut, OSError, ValueError):
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    _hang_up(s)
                    with self._lock:
                        self._socks.discard(s)

    def _stall(self) -> None:
        """Hold the connection open and silent until the proxy closes."""
        self.stalled.set()
        self._closed.wait()

    def _request(self, head: bytes) -> Request:
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        with self._lock:
            req = Request(len(self.requests) + 1, method, target, headers)
            self.requests.append(req)
        return req


class _Budget:
    """Writes to the client until ``limit`` bytes were sent, then raises :class:`_Cut`
    (after ``stall()``, which holds the connection, when given)."""

    def __init__(self, sock: socket.socket, limit: int | None,
                 stall: Callable[[], None] | None = None):
        self.sock, self.left, self.stall = sock, limit, stall

    def __call__(self, data: bytes) -> None:
        if self.left is None:
            self.sock.sendall(data)
            return
        if len(data) >= self.left:
            if self.left:
                self.sock.sendall(data[:self.left])
            self.left = 0
            if self.stall is not None:
                self.stall()
            raise _Cut()
        self.sock.sendall(data)
        self.left -= len(data)


def _hang_up(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _read_head(fp) -> bytes | None:
    """A request or response head up to and including the blank line; None at EOF."""
    lines = []
    size = 0
    while True:
        line = fp.readline(_MAX_HEAD)
        if not line:
            if lines:
                raise ValueError("connection closed inside a head")
            return None
        if not lines and line in (b"\r\n", b"\n"):
            continue  # tolerate stray blank lines between messages
        lines.append(line)
        size += len(line)
        if size > _MAX_HEAD:
            raise ValueError("head too large")
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            out[name.strip().lower()] = value.strip()
    return out


def _strip_expect(head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    return b"\r\n".join(ln for ln in lines if not ln.lower().startswith(b"expect:"))


def _read_body(fp, headers: dict[str, str], send: Callable[[bytes], None] | None,
               until_close: bool = False) -> None:
    """Read one message body framed by ``headers`` from ``fp``, passing it to ``send``."""
    def out(data: bytes) -> None:
        if send is not None:
            send(data)

    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = fp.readline(_MAX_HEAD)
            if not size_line:
                raise ValueError("connection closed inside a chunked body")
            out(size_line)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, up to the blank line
                    line = fp.readline(_MAX_HEAD)
                    out(line)
                    if line in (b"\r\n", b"\n", b""):
                        return
            _copy(fp, size + 2, out)
        return
    if "content-length" in headers:
        _copy(fp, int(headers["content-length"]), out)
        return
    if until_close:
        while True:
            data = fp.read1(_CHUNK) if hasattr(fp, "read1") else fp.read(_CHUNK)
            if not data:
                return
            out(data)


def _copy(fp, n: int, out: Callable[[bytes], None]) -> None:
    while n > 0:
        data = fp.read(min(n, _CHUNK))
        if not data:
            raise ValueError("connection closed inside a body")
        out(data)
        n -= len(data)


def _relay_response(uin, out: _Budget, method: str) -> bool:
    """Relay one response (and any 1xx before it); True if the connection stays open."""
    while True:
        head = _read_head(uin)
        if head is None:
            raise ValueError("upstream closed before answering")
        out(head)
        status_line = head.split(b"\r\n", 1)[0].split(None, 2)
        status = int(status_line[1]) if len(status_line) > 1 else 0
        if 100 <= status < 200:
            continue
        headers = _headers(head)
        bodiless = method == "HEAD" or status in (204, 304)
        framed = "content-length" in headers or "chunked" in headers.get(
            "transfer-encoding", "").lower()
        if not bodiless:
            _read_body(uin, headers, out, until_close=not framed)
        return (framed or bodiless) and headers.get("connection", "").lower() != "close"
