"""The write transactions of the PostgreSQL ledger: group commit, pipeline mode, the
audit chain's appends, and re-running a transaction through an outage.

Every write is a unit of work handed to the handle's
:class:`~archiver.ledger.groupcommit.GroupCommitter` (one writer connection per process,
used by one calling thread at a time, many units per transaction). A transaction is READ
COMMITTED and runs in pipeline mode (statements are sent without waiting for each
answer: the client waits only for the results it needs and at COMMIT); it asks for its
transaction id first (to settle a COMMIT whose answer was lost, see :mod:`.connections`),
runs the units' statements, and only then appends their audit
records: ``pg_advisory_xact_lock`` (per ledger schema) is taken *late*, right before the
chain's head and the heads of the jobs in the batch are read, the records inserted and
the transaction committed, so appends from every process on every host are serialised
for the shortest time and ``seq`` has no gaps. ``UNIQUE (prev)`` and ``UNIQUE (job_id,
job_prev)`` make a fork (two records linking to one predecessor, written by anything
that skipped the lock) a constraint error, and a trigger refuses UPDATE, DELETE and
TRUNCATE of audit records. The chain's format and the append rules are the core's
(:mod:`archiver.ledger.chainrules`, :class:`archiver.ledger.auditchain.AuditChain`).

A mixin of :class:`~.ledger.PostgresLedger`, which sets up the state used here in its
``__init__`` (the connections ``_conns``, the lock, the committer, the audit chain and
the open transaction's fields). The ledger's own writes (:mod:`.ledger`) and its claims
(:mod:`.claims`) run their statements through ``_q`` / ``_tx`` and the write paths
``_write`` / ``_write_now``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from archiver.ledger.auditchain import AuditChain
from archiver.ledger.groupcommit import BatchedWrites, GroupCommitter

from . import schema
from .connections import Connections, LedgerUnavailable, Outage, transient
from .sql import AUDIT_HEADS, AUDIT_INSERT


class _InDoubt(Exception):
    """COMMIT was sent and no answer came: the transaction may or may not have committed."""

    def __init__(self, xid: str, result: Any, error: BaseException):
        super().__init__(str(error))
        self.xid, self.result, self.error = xid, result, error


class _Committer(GroupCommitter):
    """The core's group commit, each transaction run by :meth:`PostgresTransactions._run_tx`
    (which re-runs a whole group through an outage) instead of a context manager."""

    def __init__(self, run_tx: Callable[[Callable[[], Any]], Any], name: str):
        super().__init__(self._unused, name)
        self._run_tx = run_tx

    @staticmethod
    def _unused():  # pragma: no cover - _commit below never calls it
        raise AssertionError("not used")

    def _commit(self, group: list) -> None:
        try:
            results = self._run_tx(lambda: [unit.work() for unit in group])
        except BaseException as exc:  # noqa: BLE001 - handed to the callers
            if len(group) == 1 or isinstance(exc, LedgerUnavailable):
                for unit in group:  # an outage fails every unit alike: no re-run alone
                    unit.error = exc if len(group) == 1 else LedgerUnavailable(str(exc))
            else:  # one unit failed (a fence, a bug): each alone, so only it raises
                for unit in group:
                    try:
                        unit.result = self._run_tx(unit.work)
                    except BaseException as err:  # noqa: BLE001 - handed to its caller
                        unit.error = err
        else:
            for unit, result in zip(group, results):
                unit.result = result


class PostgresTransactions(BatchedWrites):
    """The write transactions of :class:`~.ledger.PostgresLedger`; see the module
    docstring."""

    # Set by PostgresLedger.__init__ (and _group() after a fork).
    _conns: Connections
    _lock: threading.Lock
    _local: threading.local
    _pid: int
    _committer: GroupCommitter
    _chain: AuditChain
    _lock_key: int
    _tx_conn: psycopg.Connection | None
    _tx_pipe: psycopg.Pipeline | None
    _head_row: tuple[int, str] | None
    _tx_audits: list[dict[str, Any]]
    _job_heads: dict[str, str | None]
    _audit_rows: list[tuple]
    location: str

    # ------------------------------------------------------------------ transactions
    def _group(self) -> GroupCommitter:
        """The committer (a new one after a fork: the parent's and its lock stayed behind)."""
        if os.getpid() != self._pid:  # forked: the committer and its lock stayed behind
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._committer = _Committer(self._run_tx, f"ledger-writer {self.location}")
        return self._committer

    def _run_tx(self, work: Callable[[], Any]) -> Any:
        """``work()`` in one transaction on the writer connection, committed; re-run whole
        after a transient failure, for up to the outage tolerance (see .connections)."""
        outage = Outage(self._conns, "write")
        in_doubt: _InDoubt | None = None
        while True:
            error: BaseException
            try:
                with self._lock:
                    conn = self._conns.writer()
                    if in_doubt is not None:
                        status = self._xact_status(conn, in_doubt.xid)
                        if status == "committed":
                            outage.recovered()
                            return in_doubt.result
                        if status == "in progress":  # not settled yet: ask again shortly
                            raise psycopg.OperationalError("the interrupted COMMIT is still "
                                                           "in progress on the server")
                        in_doubt = None  # aborted: run it again
                    result = self._tx_once(conn, work)
                outage.recovered()
                return result
            except _InDoubt as exc:
                in_doubt, error = exc, exc.error
            except Exception as exc:  # noqa: BLE001 - sorted by transient()
                if not transient(exc):
                    if isinstance(exc, psycopg.Error):  # a refused statement: say where
                        raise self._conns.fail("a write was refused", exc) from exc
                    raise
                error = exc
            outage.failed(error)

    @staticmethod
    def _xact_status(conn: psycopg.Connection, xid: str) -> str:
        try:
            status = conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()[0]
        except psycopg.OperationalError:
            raise
        except psycopg.Error:  # "transaction ID is in the future": never committed
            status = "aborted"
        conn.rollback()
        return status or "aborted"

    def _tx_once(self, conn: psycopg.Connection, work: Callable[[], Any]) -> Any:
        """One transaction in pipeline mode: statements are sent without waiting for each
        answer, and the client waits only where it needs a result (a ``RETURNING`` row,
        the audit chain's heads) and at ``COMMIT``. A group of writes is so two or three
        round trips instead of one per statement plus ``BEGIN``, the transaction id and
        ``COMMIT`` (measured: most of a Celery worker's CPU in the ledger went to the
        client side of those round trips). The transaction id is known before ``COMMIT``
        is sent, so a ``COMMIT`` cut off by an outage is settled by asking the server."""
        self._chain.begin()
        self._tx_conn, self._tx_audits = conn, []
        xid, result, committing = None, None, False
        try:
            with conn.pipeline() as pipe:
                self._tx_pipe = pipe
                try:
                    xid_cur = conn.execute("SELECT pg_current_xact_id()::text")
                    result = work()
                    if self._tx_audits:
                        self._append_audits(conn, self._tx_audits)
                    xid = xid_cur.fetchone()[0]  # waits for every statement sent so far
                except BaseException:
                    self._chain.rollback()  # rolled back: forget what it appended
                    try:
                        conn.rollback()
                    except Exception:  # noqa: BLE001 - a broken connection is made anew
                        self._conns.drop_writer()
                    raise
                committing = True
                conn.commit()  # sends the audit inserts and COMMIT together
            return result
        except BaseException as exc:
            if not committing:
                raise
            # COMMIT was sent: until the pipeline has been left cleanly, its outcome is
            # unknown if the connection failed (an in-doubt transaction, settled by xid).
            self._chain.rollback()
            if transient(exc):
                self._conns.drop_writer()
                raise _InDoubt(xid, result, exc) from exc
            try:
                conn.rollback()
            except Exception:  # noqa: BLE001
                self._conns.drop_writer()
            raise
        finally:
            self._tx_conn, self._tx_audits, self._tx_pipe = None, [], None

    def _synced(self, cur: psycopg.Cursor) -> psycopg.Cursor:
        """``cur`` once its statement has answered (its ``rowcount`` is known)."""
        if self._tx_pipe is not None:
            self._tx_pipe.sync()
        return cur

    def _q(self, sql: str, args: Any = None) -> psycopg.Cursor:
        """One statement of the open write transaction."""
        if self._tx_conn is None:
            raise RuntimeError("a ledger statement outside the writer's transaction")
        return self._tx_conn.execute(sql, args)

    def _audit(self, kind: str, **record: Any) -> None:
        """An audit record of the open transaction, appended when it commits."""
        self._tx_audits.append({"kind": kind, **record})

    def _tx(self, statements: list[tuple[str, tuple]], audit: dict | None = None,
            audits: list[dict] | None = None) -> None:
        """``statements`` and their audit records, committed together."""
        records = audits or ([audit] if audit else [])

        def work() -> None:
            for sql, args in statements:
                self._q(sql, args)
            for record in records:
                self._audit(**record)

        self._write(work)

    # -- the audit chain's store (AuditChain calls these under the advisory lock)
    def _append_audits(self, conn: psycopg.Connection, records: list[dict[str, Any]]) -> None:
        # Lock, then read the heads: in one round trip, but as separate statements, so
        # the reads' snapshot is taken once the lock is held (READ COMMITTED).
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (schema.AUDIT_LOCK, self._lock_key))
        jobs = list(dict.fromkeys(r["job_id"] for r in records if r.get("job_id") is not None))
        self._job_heads, self._head_row = {}, None
        for job_id, seq, digest in conn.execute(AUDIT_HEADS, (jobs,)).fetchall():
            if job_id is None:
                self._head_row = (seq, digest)
            else:
                self._job_heads[job_id] = digest
        self._audit_rows = []
        for record in records:
            self._chain.append(**record)
        # executemany: one statement per record, pipelined (measured: cheaper for the
        # client than one INSERT ... SELECT FROM unnest(arrays), whose arrays psycopg
        # builds in Python).
        with conn.cursor() as cur:
            cur.executemany(AUDIT_INSERT, self._audit_rows)
        self._audit_rows = []

    def _read_head(self) -> tuple[int, str] | None:
        return self._head_row  # read with the job heads, under the lock

    def _read_job_head(self, job_id: str) -> str | None:
        if job_id not in self._job_heads:  # pragma: no cover - every job is prefetched
            row = self._q("SELECT hash FROM audit WHERE job_id=%s ORDER BY seq DESC LIMIT 1",
                          (job_id,)).fetchone()
            self._job_heads[job_id] = row[0] if row else None
        return self._job_heads[job_id]

    def _insert_audit(self, seq: int, job_id: str | None, line: str, digest: str) -> None:
        record = json.loads(line)
        self._audit_rows.append((seq, job_id, record["prev"], record["job_prev"], line, digest))
        if job_id is not None:
            self._job_heads[job_id] = digest
