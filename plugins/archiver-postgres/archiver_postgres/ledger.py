"""The PostgreSQL ledger: one database (or schema) shared by workers on many hosts.

**Writes.** Every write is a unit of work handed to the handle's
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

**Reads** go through a small pool (:mod:`.connections`) and see committed data only;
reads inside ``batch()`` see the ledger as it was before the block, as the protocol says.

**Schema.** Opening never migrates: a ledger of an older schema, or none, is refused
with a :class:`~archiver.errors.LedgerSchemaError` saying to run ``archiver ledger
migrate``, which opens it with ``migrate=True`` (:mod:`.schema`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from archiver.errors import LedgerError, LedgerMissing
from archiver.ledger.auditchain import AuditChain
from archiver.ledger.chainrules import retention_facts
from archiver.ledger.coordination import Coordination
from archiver.ledger.facts import expires_ts, job_facts
from archiver.ledger.groupcommit import GroupCommitter
from archiver.ledger.readonly import WRITE_METHODS
from archiver.ledger.states import ARCHIVED
from archiver.model import Job, StoredObject

from . import schema
from .claims import PostgresClaims
from .connections import Connections, LedgerUnavailable, Outage, transient
from .reads import PostgresReads
from .sql import (
    ADD_EVENT,
    AUDIT_HEADS,
    AUDIT_INSERT,
    PUT_ARTIFACT,
    PUT_BAG,
    PUT_COPY,
    PUT_FIXITY,
    UPSERT_JOB,
)
from .urls import PgUrl, parse

BACKEND = "postgresql"


class _InDoubt(Exception):
    """COMMIT was sent and no answer came: the transaction may or may not have committed."""

    def __init__(self, xid: str, result: Any, error: BaseException):
        super().__init__(str(error))
        self.xid, self.result, self.error = xid, result, error


class _Committer(GroupCommitter):
    """The core's group commit, each transaction run by :meth:`PostgresLedger._run_tx`
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


def _settings_values(settings: Any) -> tuple[float, float]:
    """``ledger.outage_tolerance`` and ``lease.ttl`` (defaults when absent)."""
    tolerance = getattr(getattr(settings, "ledger", None), "outage_tolerance", None)
    ttl = getattr(getattr(settings, "lease", None), "ttl", None)
    return (60.0 if tolerance is None else float(tolerance),
            60.0 if ttl is None else float(ttl))


def _inspect(conns: Connections, *, migrate: bool = False) -> tuple[Any, str | None, list]:
    """Connect once: apply migrations if asked, then the schema state and the schema the
    tables live in. Connection errors become a LedgerError without the password."""
    where = conns.url.location
    try:
        with conns.connect(autocommit=True) as conn:
            applied = schema.migrate(conn, where) if migrate else []
            state = schema.inspect(conn, where)
            name = conn.execute("SELECT current_schema()").fetchone()[0]
    except psycopg.Error as exc:
        raise conns.fail("cannot open the ledger", exc) from None
    return state, name, applied


class PostgresLedger(PostgresClaims, Coordination, PostgresReads):
    """The PostgreSQL ledger (see the module docstring). Thread-safe.

    ``url``: the ``postgresql://`` URL (password included; never shown). ``create=False``
    refuses a database without a ledger schema (:class:`~archiver.errors.LedgerMissing`);
    with ``create=True`` that is a :class:`~archiver.errors.LedgerSchemaError` saying how
    to create it; ``migrate=True`` applies pending migrations first (``archiver ledger
    migrate``). ``outage_tolerance``: seconds an in-flight operation is retried while
    PostgreSQL does not answer; ``lease_ttl``: a heartbeat older than that is a dead
    holder (``lease_rows``)."""

    backend = BACKEND

    def __init__(self, url: str | PgUrl, *, create: bool = True, migrate: bool = False,
                 outage_tolerance: float = 60.0, lease_ttl: float = 60.0):
        self._url = parse(url) if isinstance(url, str) else url
        self._conns = Connections(self._url, tolerance=outage_tolerance)
        self.lease_ttl = float(lease_ttl)
        state, name, self.migrated = _inspect(self._conns, migrate=migrate)
        if state.version == 0 and not create and not migrate:
            missing = LedgerMissing(self.location)
            missing.args = (f"no ledger at {self.location} (the database has no ledger "
                            f"schema): {schema.migrate_hint(self.location)} to create it",)
            raise missing
        schema.require_current(state, self.location)
        self._lock_key = schema.lock_key(name)
        self._pid = os.getpid()
        self._lock = threading.Lock()   # the writer connection and the open transaction
        self._local = threading.local()  # .collected: the writes of an open batch()
        self._committer = _Committer(self._run_tx, f"ledger-writer {self.location}")
        self._chain = AuditChain(self._read_head, self._read_job_head, self._insert_audit)
        self._tx_conn: psycopg.Connection | None = None
        self._tx_pipe: psycopg.Pipeline | None = None
        self._head_row: tuple[int, str] | None = None
        self._tx_audits: list[dict[str, Any]] = []
        self._job_heads: dict[str, str | None] = {}
        self._audit_rows: list[tuple] = []

    def __repr__(self) -> str:
        return f"PostgresLedger({self.location!r})"

    @property
    def location(self) -> str:
        """The URL without its password."""
        return self._url.location

    # ------------------------------------------------------------------ transactions
    def _writer(self) -> GroupCommitter:
        if os.getpid() != self._pid:  # forked: the committer and its lock stayed behind
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._committer = _Committer(self._run_tx, f"ledger-writer {self.location}")
        return self._committer

    @contextmanager
    def batch(self) -> Iterator[None]:
        """See :meth:`archiver.ledger.protocols.RunLedger.batch`."""
        if getattr(self._local, "collected", None) is not None:
            yield  # nested: the outer block commits
            return
        self._local.collected = collected = []
        try:
            yield
        finally:
            self._local.collected = None
        if collected:
            self._writer().run(lambda: [work() for work in collected])

    def _write(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` in a committed transaction, or add it to this thread's open
        :meth:`batch` (then None is returned)."""
        collected = getattr(self._local, "collected", None)
        if collected is not None:
            collected.append(work)
            return None
        return self._writer().run(work)

    def _write_now(self, work: Callable[[], Any], what: str) -> Any:
        """A write whose result the caller needs: never deferred into a batch."""
        if getattr(self._local, "collected", None) is not None:
            raise RuntimeError(f"{what}() inside batch(): its result is not known until "
                               "the batch commits; call it outside the block")
        return self._writer().run(work)

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

    # ------------------------------------------------------------------ reads
    def _exec(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        args = tuple(args) if not isinstance(args, tuple) else args
        return self._conns.read(lambda conn: conn.execute(sql, args or None).fetchall())

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

    # ------------------------------------------------------------------ jobs
    def _job_statement(self, job: Job, state: str, error: str | None,
                       now: float) -> tuple[str, tuple]:
        return UPSERT_JOB, (job.id, job.project_id, job.status, state, job.expires_at, error,
                            json.dumps(job.raw, sort_keys=True), now, now,
                            now if state == ARCHIVED else None, expires_ts(job.expires_at))

    def record_job(self, job: Job, state: str, error: str | None = None) -> None:
        self._tx([self._job_statement(job, state, error, time.time())],
                 audit={"kind": "job", "job_id": job.id, "message": state,
                        "data": job_facts(job, state, error)})

    # ------------------------------------------------------------------ artifacts, copies
    def record_artifact(self, job_id, path, *, kind, key, filename, size, received, state,
                        error) -> None:
        audit = None if state != "stored" else {
            "kind": "received", "job_id": job_id, "path": path, "data": {
                "kind": kind, "key": key, "size": size, "digests": received,
                "filename": filename}}
        row = (job_id, path, kind, key, filename, size, json.dumps(received), state, error,
               time.time())
        self._tx([(PUT_ARTIFACT, row)], audit=audit)

    def record_copy(self, job_id, path, stored: StoredObject, *, received, chain,
                    verified) -> None:
        retention = retention_facts(stored.extra)
        audits = [{"kind": "copy", "job_id": job_id, "path": path, "sink": stored.sink,
                   "message": stored.location or stored.key, "data": {
                       "key": stored.key, "location": stored.location,
                       "size": stored.size, "stored": stored.digests,
                       "received": received, "provider_checksum": stored.provider_checksum,
                       "existed": stored.existed, "verified": verified}}]
        if retention:
            audits.append({"kind": "retention", "job_id": job_id, "path": path,
                           "sink": stored.sink, "data": {"key": stored.key, **retention}})
        row = (job_id, path, stored.sink, stored.key, stored.location, stored.size,
               json.dumps(received), json.dumps(stored.digests),
               json.dumps(stored.provider_checksum), json.dumps(chain),
               json.dumps(stored.extra, default=str), bool(stored.existed), bool(verified),
               time.time())
        self._tx([(PUT_COPY, row)], audits=audits)

    # ------------------------------------------------------------------ pending writers
    def add_pending(self, sink: str, token: str, job_id: str | None, path: str | None, *,
                    owner: str | None = None) -> int:
        return int(self._write_now(lambda: self._q(
            "INSERT INTO pending (sink, token, job_id, path, started, owner)"
            " VALUES (%s,%s,%s,%s,%s,%s) RETURNING id",
            (sink, token, job_id, path, time.time(), owner)).fetchone()[0], "add_pending"))

    def update_pending(self, pending_id: int, token: str) -> None:
        self._write(lambda: self._q("UPDATE pending SET token=%s WHERE id=%s",
                                    (token, pending_id)))

    def remove_pending(self, pending_id: int) -> None:
        self._write(lambda: self._q("DELETE FROM pending WHERE id=%s", (pending_id,)))

    # ------------------------------------------------------------------ events
    def event(self, kind, message="", *, job_id=None, path=None, sink=None,
              data: dict[str, Any] | None = None) -> None:
        """An event, also appended to the audit chain with ``data`` (JSON-able facts)."""
        self._tx([(ADD_EVENT, (time.time(), kind, job_id, path, sink, message))],
                 audit={"kind": kind, "job_id": job_id, "path": path, "sink": sink,
                        "message": message, "data": data})

    # ------------------------------------------------------------------ bags, fixity
    def record_bag_file(self, job_id: str, sink: str, name: str, key: str, size: int,
                        digests: dict[str, Any]) -> None:
        self._tx([(PUT_BAG, (job_id, sink, name, key, size, json.dumps(digests),
                             time.time()))])

    def record_fixity(self, job_id: str, path: str, sink: str, ok: bool, message: str,
                      data: dict[str, Any]) -> None:
        now = time.time()
        self._tx([(PUT_FIXITY, (job_id, path, sink, now, bool(ok), message)),
                  (ADD_EVENT, (now, "fixity", job_id, path, sink, message))],
                 audit={"kind": "fixity", "job_id": job_id, "path": path, "sink": sink,
                        "message": message, "data": {"ok": ok, **data}})

    # ------------------------------------------------------------------ schema, close
    def schema_info(self) -> dict[str, Any]:
        state = self._conns.read(lambda conn: schema.inspect(conn, self.location))
        return schema.describe(state, self.backend, self.location)

    def close(self) -> None:
        """Commit what is queued, close the connections."""
        self._writer().close()
        self._conns.close()


class PostgresReadOnlyLedger(PostgresReads):
    """The dry-run and inspection ledger (``open_ledger(..., read_only=True)``): reads
    only, on connections the server also holds read-only
    (``default_transaction_read_only``). It never creates or migrates: a database
    without a ledger schema reads as an empty ledger, an older schema is read as it is,
    a newer (or edited) one is refused. Every write method raises ``RuntimeError("dry
    run: ledger.X() would write to the ledger")``."""

    backend = BACKEND

    def __init__(self, url: str | PgUrl, *, outage_tolerance: float = 60.0,
                 lease_ttl: float = 60.0):
        self._url = parse(url) if isinstance(url, str) else url
        self._conns = Connections(self._url, tolerance=outage_tolerance, read_only=True)
        self.lease_ttl = float(lease_ttl)
        self._state, _, _ = _inspect(self._conns)
        schema.check(self._state, self.location)
        self._claims_schema = self._state.version >= 2

    def __repr__(self) -> str:
        return f"PostgresReadOnlyLedger({self.location!r})"

    @property
    def location(self) -> str:
        return self._url.location

    def _exec(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        if self._state.version == 0:
            return []
        args = tuple(args) if not isinstance(args, tuple) else args
        return self._conns.read(lambda conn: conn.execute(sql, args or None).fetchall())

    def schema_info(self) -> dict[str, Any]:
        return schema.describe(self._state, self.backend, self.location)

    def close(self) -> None:
        self._conns.close()

    def __getattr__(self, name: str):
        if name in WRITE_METHODS:
            raise RuntimeError(f"dry run: ledger.{name}() would write to the ledger")
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")


def open_postgres(url: str, *, settings: Any = None, create: bool = True,
                  read_only: bool = False, migrate: bool = False):
    """The opener registered for ``postgresql://`` and ``postgres://`` (see
    :func:`archiver.ledger.open_ledger`)."""
    tolerance, ttl = _settings_values(settings)
    if read_only:
        return PostgresReadOnlyLedger(url, outage_tolerance=tolerance, lease_ttl=ttl)
    try:
        return PostgresLedger(url, create=create, migrate=migrate,
                              outage_tolerance=tolerance, lease_ttl=ttl)
    except LedgerError:
        raise
    except psycopg.Error as exc:  # pragma: no cover - _inspect translates these
        raise LedgerError(f"ledger at {parse(url).location}: "
                          f"{parse(url).scrub(str(exc))}") from None
