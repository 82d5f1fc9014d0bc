"""Stops that stop: cancelling I/O that is blocked in the network.

A stop flag checked between chunks does nothing for a thread blocked in a socket
``recv``/``send`` (a stalled download or upload): that thread wakes up only when the read
timeout expires, or never. So every runtime has a :class:`Canceller`, and in-flight I/O
makes itself known to it:

* work runs inside ``with canceller.scope():`` (the fan-out does this for every object;
  a writer that uploads on its own threads captures :func:`current` and opens a scope of
  the same canceller there);
* HTTP connections built with :class:`CancellableConnection` (a mixin for urllib3
  connection classes: :func:`cancellable_adapter` for ``requests`` sessions, the S3
  plugin's botocore pools) call :func:`watch_socket` when they connect and before each
  request, which puts their socket in the thread's innermost scope;
* anything else can register a closer for a block: ``with canceller.cancellable(fn):``.

:meth:`Canceller.cancel` (called by ``Runtime.request_stop``) shuts down every socket of
every open work scope (``shutdown(SHUT_RDWR)`` makes a blocked ``recv``/``send`` on another
thread return at once; ``close()`` does not) and calls the closers. Sockets that join a
work scope afterwards are shut down on the spot, so library retries fail fast.

Cleaning up after an abort (aborting a multipart upload, cancelling a resumable session)
needs the network too, so it runs in ``with cleanup():`` scopes, which a stop spares for
``CLEANUP_BUDGET`` seconds and then cuts as well: a dead network cannot hold the exit up;
what could not be cleaned stays in the ledger's pending writers for the next start.
"""

from __future__ import annotations

import logging
import socket
import threading
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

from .errors import ArchiverError

log = logging.getLogger("archiver.cancel")

#: Seconds a stop leaves to cleanup requests (abort an upload) before cutting them too.
CLEANUP_BUDGET = 1.0

_local = threading.local()
_owners: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # socket -> _Scope
_owners_lock = threading.Lock()


class Cancelled(ArchiverError):
    """I/O refused because a stop was requested. Deliberately not an OSError or a
    ``requests`` error: client libraries must not retry it."""


def shutdown(sock: socket.socket) -> None:
    """Wake every thread blocked on ``sock``; never raises."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):  # already closed or not connected
        pass


class _Scope:
    def __init__(self, canceller: Canceller, cleanup: bool):
        self.canceller, self.cleanup = canceller, cleanup
        self.sockets: set[socket.socket] = set()

    @property
    def cut(self) -> bool:
        c = self.canceller
        return c.cleanup_cut.is_set() if self.cleanup else c.cancelled.is_set()

    def close_all(self) -> None:
        for sock in list(self.sockets):
            shutdown(sock)


class Canceller:
    """The in-flight I/O of one runtime, and the one call that cuts it (module doc)."""

    def __init__(self, cleanup_budget: float = CLEANUP_BUDGET):
        self.cancelled = threading.Event()
        self.cleanup_cut = threading.Event()
        self.cleanup_budget = cleanup_budget
        self._lock = threading.Lock()
        self._scopes: set[_Scope] = set()
        self._closers: dict[int, Callable[[], None]] = {}
        self._next = 0

    def __repr__(self) -> str:
        return f"Canceller(cancelled={self.cancelled.is_set()}, scopes={len(self._scopes)})"

    # ------------------------------------------------------------------ registering
    @contextmanager
    def scope(self, *, cleanup: bool = False) -> Iterator[None]:
        """Sockets watched on this thread inside the block are cut by :meth:`cancel`
        (``cleanup``: only once the cleanup budget is spent)."""
        scope = _Scope(self, cleanup)
        stack = _stack()
        with self._lock:
            self._scopes.add(scope)
        stack.append(scope)
        try:
            yield
        finally:
            stack.remove(scope)
            with self._lock:
                self._scopes.discard(scope)
            with _owners_lock:
                for sock in scope.sockets:
                    if _owners.get(sock) is scope:
                        del _owners[sock]
            scope.sockets.clear()

    @contextmanager
    def cancellable(self, closer: Callable[[], None]) -> Iterator[None]:
        """Call ``closer`` (once, from the stopping thread) if a stop comes during the
        block; at once if it came already."""
        with self._lock:
            key, self._next = self._next, self._next + 1
            self._closers[key] = closer
        if self.cancelled.is_set():
            self._call(self._closers.pop(key, None))
        try:
            yield
        finally:
            with self._lock:
                self._closers.pop(key, None)

    # ------------------------------------------------------------------ cancelling
    def cancel(self) -> None:
        """Cut every work scope's sockets and call the closers now; cleanup scopes after
        ``cleanup_budget`` seconds. Idempotent, safe from any thread (not from a signal
        handler that interrupted a thread holding the lock: see Runtime.request_stop)."""
        if self.cancelled.is_set():
            return
        self.cancelled.set()
        with self._lock:
            scopes = [s for s in self._scopes if not s.cleanup]
            closers, self._closers = list(self._closers.values()), {}
        for scope in scopes:
            scope.close_all()
        for closer in closers:
            self._call(closer)
        timer = threading.Timer(self.cleanup_budget, self.cut_cleanup)
        timer.daemon = True
        timer.start()

    def cut_cleanup(self) -> None:
        """The cleanup budget is spent: cut the cleanup requests still waiting."""
        self.cleanup_cut.set()
        with self._lock:
            scopes = [s for s in self._scopes if s.cleanup]
        for scope in scopes:
            scope.close_all()

    @staticmethod
    def _call(closer: Callable[[], None] | None) -> None:
        if closer is None:
            return
        try:
            closer()
        except Exception:  # noqa: BLE001 - a closer failing must not stop the others
            log.debug("a closer failed", exc_info=True)


# ---------------------------------------------------------------------- this thread
def _stack() -> list[_Scope]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def current() -> Canceller | None:
    """The canceller of this thread's innermost scope (None outside any scope)."""
    stack = _stack()
    return stack[-1].canceller if stack else None


def cancelled() -> bool:
    """True when this thread's innermost scope has been cut: give up, do not retry."""
    stack = _stack()
    return bool(stack) and stack[-1].cut


def check() -> None:
    """Raise :class:`Cancelled` when :func:`cancelled`."""
    if cancelled():
        raise Cancelled("stopped: the request was not sent")


@contextmanager
def cleanup() -> Iterator[None]:
    """A cleanup scope on this thread's canceller (module doc); no-op outside a scope."""
    canceller = current()
    if canceller is None:
        yield
        return
    with canceller.scope(cleanup=True):
        yield


def watch_socket(sock: socket.socket | None) -> None:
    """Put ``sock`` in this thread's innermost scope (it leaves any other scope); cut it
    at once when that scope is cut already. No-op outside a scope."""
    stack = _stack()
    if sock is None or not stack:
        return
    scope = stack[-1]
    with _owners_lock:
        old = _owners.get(sock)
        if old is not scope:
            if old is not None:
                old.sockets.discard(sock)
            try:
                _owners[sock] = scope
            except TypeError:  # not weak-referenceable: track it in the scope only
                pass
            scope.sockets.add(sock)
    if scope.cut:
        shutdown(sock)


# ---------------------------------------------------------------------- HTTP clients
class CancellableConnection:
    """Mixin for a urllib3 ``HTTPConnection`` (or subclass, botocore's included): its
    socket joins the current scope when it connects and before every request on it."""

    def connect(self) -> None:
        check()
        super().connect()
        watch_socket(getattr(self, "sock", None))

    def request(self, *args, **kwargs):
        check()
        watch_socket(getattr(self, "sock", None))
        return super().request(*args, **kwargs)


_adapter_cls = None


def cancellable_adapter(**kwargs):
    """A ``requests`` HTTPAdapter whose connections are :class:`CancellableConnection`
    and whose ``send`` turns a failure caused by a stop into :class:`Cancelled` (so that
    retry loops built on ``requests`` errors give up). Mount it on ``http://`` and
    ``https://``; ``kwargs`` go to ``HTTPAdapter``."""
    global _adapter_cls
    if _adapter_cls is None:
        _adapter_cls = _make_adapter_cls()
    return _adapter_cls(**kwargs)


def _make_adapter_cls():
    import requests.adapters
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class _HTTPConnection(CancellableConnection, HTTPConnection):
        pass

    class _HTTPSConnection(CancellableConnection, HTTPSConnection):
        pass

    class _HTTPPool(HTTPConnectionPool):
        ConnectionCls = _HTTPConnection

    class _HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = _HTTPSConnection

    pools = {"http": _HTTPPool, "https": _HTTPSPool}

    class CancellableAdapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            # an instance attribute: only this adapter's pools change
            self.poolmanager.pool_classes_by_scheme = dict(pools)

        def proxy_manager_for(self, proxy, **kwargs):
            manager = super().proxy_manager_for(proxy, **kwargs)
            manager.pool_classes_by_scheme = dict(pools)
            return manager

        def send(self, request, *args, **kwargs):
            check()
            try:
                return super().send(request, *args, **kwargs)
            except requests.RequestException as exc:
                if cancelled():
                    raise Cancelled("stopped: the request was cut") from exc
                raise

    return CancellableAdapter


def mount_cancellable(session) -> None:
    """Mount :func:`cancellable_adapter` on a ``requests`` session, keeping the pool
    sizes of the adapter it replaces."""
    for prefix in ("https://", "http://"):
        old = session.adapters.get(prefix)
        kw = {}
        if old is not None:
            kw = {"pool_connections": getattr(old, "_pool_connections", 10),
                  "pool_maxsize": getattr(old, "_pool_maxsize", 10),
                  "max_retries": old.max_retries, "pool_block": getattr(old, "_pool_block",
                                                                         False)}
        session.mount(prefix, cancellable_adapter(**kw))


__all__ = ["CLEANUP_BUDGET", "Cancelled", "CancellableConnection", "Canceller",
           "cancellable_adapter", "cancelled", "check", "cleanup", "current",
           "mount_cancellable", "shutdown", "watch_socket"]
