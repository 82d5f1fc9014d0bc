"""The connections of one ledger handle, and what happens when PostgreSQL goes away.

Per handle (so per process): one **writer** connection, used only by the handle's
:class:`~archiver.ledger.groupcommit.GroupCommitter` thread (every write of the process
goes through it, many per transaction), and a small **read pool**
(``ConnectionPool(min_size=1, max_size=3)``). The pool does not test a connection each
time it hands one out (``check=``: one more round trip per read, several per job): a
connection a restart has cut fails its read with an ``OperationalError``, which is
retried on a fresh connection like any outage (below), and the pool replaces the broken
one when it comes back.
Both are made on first use, never at import or when the plugin registers, and made anew
in a process forked from the one that made them (the parent's sockets are left alone:
closing them in the child would end the parent's sessions).

**Outages.** An operation that fails because the server is gone (restart, failover,
network: ``OperationalError``) or because PostgreSQL aborted its transaction (deadlock,
serialization failure) is retried, with a fresh connection and a growing pause, for up
to ``ledger.outage_tolerance`` seconds from its first failure; then it fails loudly with
:class:`LedgerUnavailable` (a ``LedgerError``). A write transaction is always re-run
whole (its statements, its audit records), never continued. A failure *during* COMMIT
leaves the outcome unknown; the transaction's id was read at its start, and
``pg_xact_status`` on the next connection tells: committed (done, not re-run) or aborted
(re-run). So a group of writes is recorded exactly once or not at all.

Messages name the ledger by its URL without the password (:class:`~.urls.PgUrl`), and
the driver's text is scrubbed of it too.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from archiver.errors import LedgerError

from .urls import DEFAULT, PgUrl

log = logging.getLogger("archiver.ledger.postgres")
T = TypeVar("T")

POOL_MIN, POOL_MAX = 1, 3
CONNECT_TIMEOUT = 10  # seconds, unless the URL says connect_timeout=
_ABANDONED: list[Any] = []  # connections and pools inherited through fork(): never touched


class LedgerUnavailable(LedgerError):
    """PostgreSQL did not answer (or kept aborting) for longer than the tolerance."""


def transient(exc: BaseException) -> bool:
    """Worth retrying: the server or the connection is gone (or not ready yet), or
    PostgreSQL aborted the transaction to resolve a deadlock or a serialization conflict."""
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


# PostgreSQL ended the transaction to resolve a conflict (both are OperationalErrors).
_ROLLED_BACK = (pgerrors.DeadlockDetected, pgerrors.SerializationFailure)


def _broken(conn: Any) -> bool:
    return conn is None or conn.closed or getattr(conn, "broken", False)


#: Milliseconds a session may sit idle inside a transaction (see Connections).
IDLE_IN_TRANSACTION_MS = 10_000


class Connections:
    """The writer connection and the read pool of one ledger handle (see module doc)."""

    def __init__(self, url: PgUrl, *, tolerance: float, read_only: bool = False):
        self.url, self.tolerance, self.read_only = url, float(tolerance), read_only
        params = conninfo_to_dict(url.conninfo)
        self._kwargs: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self._kwargs["connect_timeout"] = CONNECT_TIMEOUT
        if "application_name" not in params:
            self._kwargs["application_name"] = "archiver"
        if url.prepare_threshold is not DEFAULT:
            self._kwargs["prepare_threshold"] = url.prepare_threshold
        # Every transaction of this plugin lasts milliseconds. A session idle inside one
        # for longer belongs to a process that was stopped (SIGSTOP, a VM pause) or is
        # wedged mid-transaction: it would hold job rows and the audit chain's lock, and
        # every other worker of the fleet would wait behind it. PostgreSQL ends such a
        # session; its process finds the connection gone when it wakes and fences itself.
        options = (params.get("options", "")
                   + f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}")
        if read_only:  # the server refuses writes too, not only this handle
            options += " -c default_transaction_read_only=on"
        self._kwargs["options"] = options.strip()
        self._guard = threading.Lock()
        self._pid = os.getpid()
        self._writer: psycopg.Connection | None = None
        self._pool: ConnectionPool | None = None
        self._closed = False

    # ------------------------------------------------------------------ messages
    def describe(self, exc: BaseException) -> str:
        """The driver's message, one line, without the password."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        return self.url.scrub(text)

    def fail(self, what: str, exc: BaseException) -> LedgerError:
        return LedgerError(f"ledger at {self.url.location}: {what}: {self.describe(exc)}")

    # ------------------------------------------------------------------ connections
    def connect(self, *, autocommit: bool = True) -> psycopg.Connection:
        """A new connection (raises the driver's errors: callers translate them)."""
        return psycopg.connect(self.url.conninfo, autocommit=autocommit, **self._kwargs)

    def _forked(self) -> None:
        """In a child of the process that made the connections: forget them unclosed."""
        if os.getpid() != self._pid:
            _ABANDONED.extend(x for x in (self._writer, self._pool) if x is not None)
            self._writer = self._pool = None
            self._pid = os.getpid()

    def writer(self) -> psycopg.Connection:
        """The writer connection (a transaction per use; autocommit off). Only the
        handle's committing thread calls this, holding the handle's write lock."""
        self._forked()
        if self._closed:
            raise LedgerError(f"ledger at {self.url.location}: closed")
        if _broken(self._writer):
            self.drop_writer()
            self._writer = self.connect(autocommit=False)
        return self._writer

    def drop_writer(self) -> None:
        conn, self._writer = self._writer, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it is gone either way
                pass

    def pool(self) -> ConnectionPool:
        self._forked()
        with self._guard:
            if self._closed:
                raise LedgerError(f"ledger at {self.url.location}: closed")
            if self._pool is None:
                kwargs = {"autocommit": True, **self._kwargs}
                pool = ConnectionPool(self.url.conninfo, min_size=POOL_MIN, max_size=POOL_MAX,
                                      kwargs=kwargs, open=False, name="archiver-ledger",
                                      reconnect_timeout=max(self.tolerance, 1.0))
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    def close(self) -> None:
        self._forked()
        with self._guard:
            self._closed = True
            pool, self._pool = self._pool, None
        self.drop_writer()
        if pool is not None:
            pool.close(timeout=5)

    # ------------------------------------------------------------------ retries
    def read(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """``fn(conn)`` on a pooled connection, retried through an outage."""
        outage = Outage(self, "read")
        while True:
            try:
                pool = self.pool()
                with pool.connection(timeout=outage.wait_budget()) as conn:
                    result = fn(conn)
                outage.recovered()
                return result
            except Exception as exc:  # noqa: BLE001 - sorted by transient()
                if not transient(exc):
                    if isinstance(exc, psycopg.Error):  # a refused query: say where
                        raise self.fail("a read was refused", exc) from exc
                    raise
                outage.failed(exc)


class Outage:
    """The retries of one operation: when it first failed, how long to pause next."""

    def __init__(self, conns: Connections, what: str):
        self.conns, self.what = conns, what
        self.first: float | None = None
        self.tries = 0

    def wait_budget(self) -> float:
        """How long a pool may wait for a connection now."""
        left = self.conns.tolerance if self.first is None else \
            self.conns.tolerance - (time.monotonic() - self.first)
        return max(1.0, min(10.0, left))

    def failed(self, exc: BaseException) -> None:
        """Pause before the next try, or raise LedgerUnavailable once the tolerance is
        spent (the driver's error is not chained: its text is in the message, scrubbed)."""
        now = time.monotonic()
        self.tries += 1
        if self.first is None:
            self.first = now
            if isinstance(exc, _ROLLED_BACK):
                log.info("ledger at %s: %s; re-running the transaction",
                         self.conns.url.location, self.conns.describe(exc))
            else:
                log.warning("ledger at %s: %s failed (%s); retrying for up to %gs",
                            self.conns.url.location, self.what, self.conns.describe(exc),
                            self.conns.tolerance)
        elapsed = now - self.first
        if elapsed >= self.conns.tolerance:
            raise LedgerUnavailable(
                f"ledger at {self.conns.url.location}: PostgreSQL did not answer for "
                f"{elapsed:.0f}s (ledger.outage_tolerance {self.conns.tolerance:g}s): "
                f"{self.conns.describe(exc)}; the {self.what} was not recorded") from None
        pause = min(1.0, 0.05 * (2 ** min(self.tries, 5))) * random.uniform(0.5, 1.0)
        time.sleep(min(pause, max(0.0, self.conns.tolerance - elapsed)))

    def recovered(self) -> None:
        """Say so when an operation went through after failing."""
        if self.first is not None:
            log.warning("ledger at %s: %s went through after %.1fs",
                        self.conns.url.location, self.what, time.monotonic() - self.first)
