"""The default ledger backend: one SQLite file in ``state_dir``, in WAL mode.

One connection per handle, guarded by a lock; every write is a unit of work handed to a
:class:`~archiver.ledger.groupcommit.GroupCommitter` (the calling threads take turns as
the committer, many units per transaction). Each transaction is ``BEGIN IMMEDIATE``: it takes SQLite's write lock before
anything is read, so two processes sharing the file cannot fork the audit chain, and
claims are serialised across processes (no ``SKIP LOCKED`` needed with one writer). All
processes must be on one host (WAL needs shared memory); leases use the host clock.

Crash safety: a sink copy is recorded only after the sink committed it, and a writer's
``pending`` token is recorded before the first byte is written and removed after commit or
abort, so a run killed at any point leaves either a recorded copy, or a pending token the
next run discards before redoing the work. Every job state, received artifact, stored copy
and event is also appended, in the same transaction, to the hash-chained ``audit`` table
(:mod:`archiver.ledger.auditchain`). The file upgrades itself on open
(:mod:`archiver.ledger.migrations`); a file of a newer schema is refused untouched.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import LedgerError, LedgerMissing
from ..model import Job, StoredObject
from . import migrations
from .auditchain import AuditChain
from .chainrules import retention_facts
from .coordination import Coordination
from .facts import expires_ts, job_facts
from .groupcommit import BatchedWrites, GroupCommitter
from .readonly import connect_readonly
from .sqlite_claims import SQLiteClaims
from .sqlite_reads import SQLiteReads
from .sqlite_sql import ADD_EVENT, PUT_ARTIFACT, PUT_COPY, PUT_FIXITY, UPSERT_JOB
from .states import ARCHIVED


BUSY_TIMEOUT = 30.0  # seconds a statement waits for another process's lock
BUSY_FIRST, BUSY_MAX = 0.0001, 0.005  # BEGIN IMMEDIATE's retry steps (seconds)
_BUSY = {sqlite3.SQLITE_BUSY, getattr(sqlite3, "SQLITE_BUSY_SNAPSHOT", 517)}


class SQLiteLedger(BatchedWrites, SQLiteClaims, Coordination, SQLiteReads):
    """The SQLite ledger. Thread-safe: one connection guarded by a lock (writes are tiny).

    ``create=False`` refuses a missing file (:class:`~archiver.errors.LedgerMissing`)."""

    backend = "sqlite"

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise LedgerMissing(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self._precheck()
        self._lock = threading.Lock()  # the connection: the writer's transactions, reads
        self._local = threading.local()  # .collected: the writes of an open batch()
        self._writer = GroupCommitter(self._transaction, f"ledger-writer {self.path.name}")
        self._chain = AuditChain(self._read_head, self._read_job_head, self._insert_audit)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                   isolation_level=None, timeout=BUSY_TIMEOUT)
        try:
            self._set_wal()
            # NORMAL (with WAL) survives any process crash; a power loss may drop the last
            # transactions, which costs nothing but a re-check: sinks never overwrite, so
            # the next run finds those objects stored (existed) and records them again.
            # FULL would fsync every row (~1 ms each, ~20 rows per job).
            self._db.execute("PRAGMA synchronous=NORMAL")
            # The busy timeout the connection was opened with (BEGIN IMMEDIATE waits as
            # long, in its own steps: _begin_immediate).
            self._busy_timeout = self._db.execute("PRAGMA busy_timeout").fetchone()[0] / 1000
            self.migrated = migrations.migrate_sqlite(self._db, str(self.path))
        except BaseException:
            self._db.close()
            raise

    def _set_wal(self) -> None:
        """``PRAGMA journal_mode=WAL``, retried while another process holds the file: SQLite
        answers a journal-mode change with SQLITE_BUSY at once, without its busy handler,
        when another connection is inside a transaction (two workers opening a new ledger
        together; measured: 33 of 600 opens failed before this retry)."""
        self._retry_busy("PRAGMA journal_mode=WAL", BUSY_TIMEOUT)

    def _retry_busy(self, sql: str, timeout: float) -> None:
        """Execute ``sql``, retrying on SQLITE_BUSY in steps of ~0.1 ms doubling to 5 ms,
        for up to ``timeout`` seconds from the first refusal; then SQLite's "database is
        locked" error is raised."""
        delay, deadline = BUSY_FIRST, None
        while True:
            try:
                self._db.execute(sql)
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) not in _BUSY:
                    raise
                now = time.monotonic()
                deadline = deadline or now + timeout
                if now >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, BUSY_MAX)

    def _precheck(self) -> None:
        """Refuse a newer (or edited) schema through a read-only connection, before the
        read-write connection can change anything (not even the journal mode)."""
        try:
            db = connect_readonly(self.path)
            try:
                state = migrations.inspect_sqlite(db)
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
                raise LedgerError(f"ledger at {self.path}: not an SQLite database") from exc
            return  # not readable read-only just now: checked again inside BEGIN IMMEDIATE
        migrations.check(state, "sqlite", str(self.path))

    def __repr__(self) -> str:
        return f"SQLiteLedger({str(self.path)!r})"

    @property
    def location(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ transactions
    def _group(self) -> GroupCommitter:
        return self._writer

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One SQLite transaction (run by the group's committing thread). BEGIN IMMEDIATE takes the
        write lock before the chain's head is read, so two processes sharing the ledger
        cannot fork the chain."""
        with self._lock:
            self._begin_immediate()
            self._chain.begin()
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._chain.rollback()  # rolled back: forget what it appended
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _begin_immediate(self) -> None:
        """``BEGIN IMMEDIATE``, waiting for another process's write lock in steps of
        ~0.1 ms (doubling to 5 ms) for as long as the connection's busy timeout. SQLite's
        own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ... ms between tries: with several
        worker processes committing small transactions, those sleeps were most of a
        transaction's time (the lock is held for a fraction of a millisecond). Past the
        timeout, SQLite's "database is locked" error is raised as before."""
        db = self._db
        db.execute("PRAGMA busy_timeout=0")
        try:
            self._retry_busy("BEGIN IMMEDIATE", self._busy_timeout)
        finally:
            db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")

    def _exec(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        """A read."""
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def _exec_write(self, sql: str, args: Iterable[Any] = ()) -> int | None:
        """One write statement; its lastrowid."""
        args = tuple(args)
        return self._write(lambda: self._db.execute(sql, args).lastrowid)

    def _tx(self, statements: list[tuple[str, tuple]], audit: dict | None = None,
            audits: list[dict] | None = None) -> None:
        """``statements`` and their audit records, committed together."""
        records = audits or ([audit] if audit else [])

        def work() -> None:
            for sql, args in statements:
                self._db.execute(sql, args)
            for rec in records:
                self._chain.append(**rec)

        self._write(work)

    # -- the audit chain's store (AuditChain calls these inside a transaction)
    def _read_head(self) -> tuple[int, str] | None:
        return self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
                                ).fetchone()

    def _read_job_head(self, job_id: str) -> str | None:
        row = self._db.execute("SELECT hash FROM audit WHERE job_id=? ORDER BY seq DESC"
                               " LIMIT 1", (job_id,)).fetchone()
        return row[0] if row else None

    def _insert_audit(self, seq: int, job_id: str | None, line: str, digest: str) -> None:
        self._db.execute("INSERT INTO audit (seq, job_id, line, hash) VALUES (?,?,?,?)",
                         (seq, job_id, line, digest))

    # ------------------------------------------------------------------ jobs
    def _job_statement(self, job: Job, state: str, error: str | None,
                       now: float) -> tuple[str, tuple]:
        return UPSERT_JOB, (job.id, job.project_id, job.status, state, job.expires_at, error,
                            json.dumps(job.raw, sort_keys=True), now, now,
                            now if state == ARCHIVED else None, expires_ts(job.expires_at))

    def record_job(self, job: Job, state: str, error: str | None = None) -> None:
        """The job's state (and an audit record of it); lease columns are left alone."""
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
               json.dumps(stored.extra, default=str), int(stored.existed), int(verified),
               time.time())
        self._tx([(PUT_COPY, row)], audits=audits)

    # ------------------------------------------------------------------ pending writers
    def add_pending(self, sink: str, token: str, job_id: str | None, path: str | None, *,
                    owner: str | None = None) -> int:
        rowid = self._exec_write(
            "INSERT INTO pending (sink, token, job_id, path, started, owner)"
            " VALUES (?,?,?,?,?,?)", (sink, token, job_id, path, time.time(), owner))
        if rowid is None:
            raise RuntimeError("add_pending() inside batch(): its id is not known yet")
        return int(rowid)

    def update_pending(self, pending_id: int, token: str) -> None:
        self._exec_write("UPDATE pending SET token=? WHERE id=?", (token, pending_id))

    def remove_pending(self, pending_id: int) -> None:
        self._exec_write("DELETE FROM pending WHERE id=?", (pending_id,))

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
        self._exec_write("INSERT OR REPLACE INTO bags (job_id, sink, name, key, size, digests,"
                         " stored_at) VALUES (?,?,?,?,?,?,?)",
                         (job_id, sink, name, key, size, json.dumps(digests), time.time()))

    def record_fixity(self, job_id: str, path: str, sink: str, ok: bool, message: str,
                      data: dict[str, Any]) -> None:
        """The outcome of one fixity check: rotation state plus an audit record."""
        now = time.time()
        self._tx([(PUT_FIXITY, (job_id, path, sink, now, int(ok), message)),
                  (ADD_EVENT, (now, "fixity", job_id, path, sink, message))],
                 audit={"kind": "fixity", "job_id": job_id, "path": path, "sink": sink,
                        "message": message, "data": {"ok": ok, **data}})

    # ------------------------------------------------------------------ schema, close
    def schema_info(self) -> dict[str, Any]:
        with self._lock:
            state = migrations.inspect_sqlite(self._db)
        return migrations.describe(state, "sqlite", self.backend, self.location)

    def close(self) -> None:
        self._writer.close()
        with self._lock:
            self._db.close()
