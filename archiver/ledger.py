"""The ledger: what was seen, what was stored where, what failed, and why.

SQLite in WAL mode by default (one file in ``state_dir``). The :class:`Ledger` protocol is
all the core uses, so a PostgreSQL backend for multi-machine deployments can follow.
Secrets never reach the ledger: it stores job objects, keys, digests and messages built
by archiver itself.

Crash safety: every write is its own transaction; a sink copy is recorded only after the
sink committed it, and a writer's ``pending`` token is recorded before the first byte is
written and removed after commit or abort, so a run killed at any point leaves either a
recorded copy, or a pending token that the next run discards before redoing the work.

Audit: every job state, received artifact, stored copy and event is also appended, in the
same transaction, to the hash-chained ``audit`` table (rules in
:mod:`archiver.compliance.audit`); ``bags`` records BagIt tag files written per job and
sink, ``fixity`` the last fixity check of each copy (the rotation state of sampled runs).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

from .compliance import audit as auditlog
from .ledger_writer import GroupCommitter
from .model import Job, StoredObject

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, status TEXT NOT NULL,
    state TEXT NOT NULL, expires_at TEXT, error TEXT, raw TEXT,
    first_seen REAL NOT NULL, updated REAL NOT NULL, archived_at REAL
);
CREATE TABLE IF NOT EXISTS artifacts (
    job_id TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, key TEXT,
    filename TEXT, size INTEGER, received TEXT, state TEXT NOT NULL, error TEXT,
    updated REAL NOT NULL, PRIMARY KEY (job_id, path)
);
CREATE TABLE IF NOT EXISTS copies (
    job_id TEXT NOT NULL, path TEXT NOT NULL, sink TEXT NOT NULL, key TEXT NOT NULL,
    location TEXT, size INTEGER NOT NULL, received TEXT NOT NULL, stored TEXT NOT NULL,
    provider_checksum TEXT, chain TEXT, extra TEXT, existed INTEGER NOT NULL,
    verified INTEGER NOT NULL, stored_at REAL NOT NULL, PRIMARY KEY (job_id, path, sink)
);
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, token TEXT NOT NULL,
    job_id TEXT, path TEXT, started REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
    job_id TEXT, path TEXT, sink TEXT, message TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, job_id TEXT, line TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_job ON audit(job_id, seq);
CREATE TABLE IF NOT EXISTS bags (
    job_id TEXT NOT NULL, sink TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL,
    size INTEGER NOT NULL, digests TEXT NOT NULL, stored_at REAL NOT NULL,
    PRIMARY KEY (job_id, sink, name)
);
CREATE TABLE IF NOT EXISTS fixity (
    job_id TEXT NOT NULL, path TEXT NOT NULL, sink TEXT NOT NULL, checked_at REAL NOT NULL,
    ok INTEGER NOT NULL, detail TEXT, PRIMARY KEY (job_id, path, sink)
);
"""

_UPSERT_JOB = (
    "INSERT INTO jobs (job_id, project_id, status, state, expires_at, error, raw,"
    " first_seen, updated, archived_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT(job_id) DO UPDATE SET project_id=excluded.project_id,"
    " status=excluded.status, state=excluded.state, expires_at=excluded.expires_at,"
    " error=excluded.error, raw=excluded.raw, updated=excluded.updated,"
    " archived_at=COALESCE(jobs.archived_at, excluded.archived_at)")
_PUT_ARTIFACT = (
    "INSERT OR REPLACE INTO artifacts (job_id, path, kind, key, filename, size, received,"
    " state, error, updated) VALUES (?,?,?,?,?,?,?,?,?,?)")
_PUT_COPY = (
    "INSERT OR REPLACE INTO copies (job_id, path, sink, key, location, size, received,"
    " stored, provider_checksum, chain, extra, existed, verified, stored_at)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
_ADD_EVENT = ("INSERT INTO events (ts, kind, job_id, path, sink, message)"
              " VALUES (?,?,?,?,?,?)")
_PUT_FIXITY = ("INSERT OR REPLACE INTO fixity (job_id, path, sink, checked_at, ok, detail)"
               " VALUES (?,?,?,?,?,?)")

# Job states.
ARCHIVED, INCOMPLETE, NOTHING, LOST, WAITING = (
    "archived", "incomplete", "nothing_to_store", "lost", "waiting")


@dataclass
class CopyRow:
    job_id: str
    path: str
    sink: str
    key: str
    size: int
    received: dict[str, str]
    stored: dict[str, str]
    verified: bool


_JOB_HEADS = 10_000  # jobs whose last audit record is remembered


class Ledger(Protocol):
    def batch(self) -> AbstractContextManager[None]: ...
    def job_states(self) -> dict[str, str]: ...
    def record_job(self, job: Job, state: str, error: str | None = None) -> None: ...
    def copies(self, job_id: str) -> dict[tuple[str, str], CopyRow]: ...
    def record_artifact(self, job_id: str, path: str, *, kind: str, key: str | None,
                        filename: str | None, size: int | None, received: dict[str, str],
                        state: str, error: str | None) -> None: ...
    def record_copy(self, job_id: str, path: str, stored: StoredObject, *,
                    received: dict[str, str], chain: list[dict[str, Any]],
                    verified: bool) -> None: ...
    def add_pending(self, sink: str, token: str, job_id: str | None, path: str | None) -> int: ...
    def update_pending(self, pending_id: int, token: str) -> None: ...
    def remove_pending(self, pending_id: int) -> None: ...
    def list_pending(self) -> list[tuple[int, str, str, float]]: ...
    def event(self, kind: str, message: str = "", *, job_id: str | None = None,
              path: str | None = None, sink: str | None = None,
              data: dict[str, Any] | None = None) -> None: ...
    # archiver.compliance: audit chain, bag tag files, fixity rotation state
    def audit_rows(self, job_id: str | None = None,
                   after: int = 0) -> Iterator[tuple[str, str, int]]: ...
    def record_bag_file(self, job_id: str, sink: str, name: str, key: str, size: int,
                        digests: dict[str, Any]) -> None: ...
    def bag_files(self, job_id: str | None = None,
                  sink: str | None = None) -> list[dict[str, Any]]: ...
    def copy_rows(self, *, sink: str | None = None, job_id: str | None = None,
                  since: float | None = None) -> list[dict[str, Any]]: ...
    def record_fixity(self, job_id: str, path: str, sink: str, ok: bool, message: str,
                      data: dict[str, Any]) -> None: ...
    def job_rows(self, job_id: str | None = None) -> list[dict[str, Any]]: ...
    def summary(self) -> dict[str, Any]: ...
    def open_job_rows(self, states: Iterable[str]) -> list[tuple]: ...
    def count_events(self, kind: str) -> int: ...
    def jobs_with_event(self, kind: str) -> set[str]: ...
    def close(self) -> None: ...


class SQLiteLedger:
    """The default ledger. Thread-safe: one connection guarded by a lock (writes are tiny)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the connection: the writer's transactions, reads
        self._local = threading.local()  # .collected: the writes of an open batch()
        self._writer = GroupCommitter(self._transaction, f"ledger-writer {self.path.name}")
        # The audit chain's head and each job's last record, as this process last saw and
        # wrote them; checked against the ledger once per transaction (_chain_head).
        self._head: tuple[int, str] | None = None
        self._head_checked = False
        self._job_heads: dict[str, str] = {}
        self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                   isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL (with WAL) survives any process crash; a power loss may drop the last
        # transactions, which costs nothing but a re-check: sinks never overwrite, so the
        # next run finds those objects stored (existed) and records them again. FULL
        # would fsync every row (~1 ms each, ~20 rows per job).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def __repr__(self) -> str:
        return f"SQLiteLedger({str(self.path)!r})"

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The writes this thread makes inside the block commit together, as one unit of
        one transaction, when the block ends; nothing is written if it raises. Writes
        inside return None (so no :meth:`add_pending` there); reads see the ledger as it
        was before the block."""
        if getattr(self._local, "collected", None) is not None:
            yield  # nested: the outer block commits
            return
        self._local.collected = collected = []
        try:
            yield
        finally:
            self._local.collected = None
        if collected:
            self._writer.run(lambda: [work() for work in collected])

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One SQLite transaction (run by the writer thread). BEGIN IMMEDIATE takes the
        write lock before the chain's head is read, so two processes sharing the ledger
        cannot fork the chain."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._head_checked = False
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._head, self._job_heads = None, {}  # rolled back: forget what it wrote
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _write(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` (statements on ``self._db``) in a committed transaction."""
        collected = getattr(self._local, "collected", None)
        if collected is not None:
            collected.append(work)
            return None
        return self._writer.run(work)

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
                self._append_audit(**rec)

        self._write(work)

    def _append_audit(self, kind: str, *, job_id: str | None = None, path: str | None = None,
                      sink: str | None = None, message: str = "",
                      data: dict[str, Any] | None = None) -> None:
        """Append one record; always inside a transaction (:meth:`batch`)."""
        seq, prev = self._chain_head()
        job_prev = None
        if job_id is not None:
            job_prev = self._job_heads.get(job_id)
            if job_prev is None:
                row = self._db.execute("SELECT hash FROM audit WHERE job_id=? ORDER BY seq"
                                       " DESC LIMIT 1", (job_id,)).fetchone()
                job_prev = row[0] if row else auditlog.GENESIS
        line = auditlog.make_line(seq + 1, time.time(), kind, prev=prev, job_prev=job_prev,
                                  job_id=job_id, path=path, sink=sink, message=message,
                                  data=data)
        digest = auditlog.line_hash(line)
        self._db.execute("INSERT INTO audit (seq, job_id, line, hash) VALUES (?,?,?,?)",
                         (seq + 1, job_id, line, digest))
        self._head = (seq + 1, digest)
        if job_id is not None:
            if len(self._job_heads) >= _JOB_HEADS:
                self._job_heads.clear()
            self._job_heads[job_id] = digest

    def _chain_head(self) -> tuple[int, str]:
        """(seq, hash) of the chain's last record. Read once per transaction: the per-job
        heads remembered from earlier transactions stay valid only if no other process
        appended since (the head is still the one this process wrote last)."""
        if self._head_checked:
            return self._head or (0, auditlog.GENESIS)
        row = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
                               ).fetchone()
        head = (row[0], row[1]) if row else None
        if head != self._head:
            self._job_heads.clear()
        self._head, self._head_checked = head, True
        return head or (0, auditlog.GENESIS)

    # -- jobs
    def job_states(self) -> dict[str, str]:
        return dict(self._exec("SELECT job_id, state FROM jobs"))

    def record_job(self, job: Job, state: str, error: str | None = None) -> None:
        now = time.time()
        row = (job.id, job.project_id, job.status, state, job.expires_at, error,
               json.dumps(job.raw, sort_keys=True), now, now, now if state == ARCHIVED else None)
        facts = {"project_id": job.project_id, "status": job.status, "state": state,
                 "expires_at": job.expires_at, "error": error}
        self._tx([(_UPSERT_JOB, row)],
                 audit={"kind": "job", "job_id": job.id, "message": state, "data": facts})

    # -- artifacts and copies
    def copies(self, job_id: str) -> dict[tuple[str, str], CopyRow]:
        rows = self._exec("SELECT job_id, path, sink, key, size, received, stored, verified"
                          " FROM copies WHERE job_id=?", (job_id,))
        return {(r[1], r[2]): CopyRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]),
                                      json.loads(r[6]), bool(r[7])) for r in rows}

    def record_artifact(self, job_id, path, *, kind, key, filename, size, received, state,
                        error) -> None:
        audit = None if state != "stored" else {
            "kind": "received", "job_id": job_id, "path": path, "data": {
                "kind": kind, "key": key, "size": size, "digests": received,
                "filename": filename}}
        row = (job_id, path, kind, key, filename, size, json.dumps(received), state, error,
               time.time())
        self._tx([(_PUT_ARTIFACT, row)], audit=audit)

    def record_copy(self, job_id, path, stored: StoredObject, *, received, chain,
                    verified) -> None:
        retention = auditlog.retention_facts(stored.extra)
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
        self._tx([(_PUT_COPY, row)], audits=audits)

    # -- writers left open by a crash
    def add_pending(self, sink, token, job_id, path) -> int:
        rowid = self._exec_write(
            "INSERT INTO pending (sink, token, job_id, path, started) VALUES (?,?,?,?,?)",
            (sink, token, job_id, path, time.time()))
        if rowid is None:
            raise RuntimeError("add_pending() inside batch(): its id is not known yet")
        return int(rowid)

    def update_pending(self, pending_id: int, token: str) -> None:
        self._exec_write("UPDATE pending SET token=? WHERE id=?", (token, pending_id))

    def remove_pending(self, pending_id: int) -> None:
        self._exec_write("DELETE FROM pending WHERE id=?", (pending_id,))

    def list_pending(self) -> list[tuple[int, str, str, float]]:
        return self._exec("SELECT id, sink, token, started FROM pending ORDER BY id")

    # -- events
    def event(self, kind, message="", *, job_id=None, path=None, sink=None,
              data: dict[str, Any] | None = None) -> None:
        """An event, also appended to the audit chain with ``data`` (JSON-able facts)."""
        self._tx([(_ADD_EVENT, (time.time(), kind, job_id, path, sink, message))],
                 audit={"kind": kind, "job_id": job_id, "path": path, "sink": sink,
                        "message": message, "data": data})

    def events(self, job_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        sql = "SELECT ts, kind, job_id, path, sink, message FROM events"
        args: tuple = ()
        if job_id:
            sql, args = sql + " WHERE job_id=?", (job_id,)
        rows = self._exec(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        keys = ("ts", "kind", "job_id", "path", "sink", "message")
        return [dict(zip(keys, r)) for r in reversed(rows)]

    # -- audit chain, bags, fixity (archiver.compliance)
    def audit_rows(self, job_id: str | None = None, after: int = 0,
                   page: int = 5000) -> Iterator[tuple[str, str, int]]:
        """``(line, stored hash, seq)`` in seq order, read page by page."""
        while True:
            sql = "SELECT line, hash, seq FROM audit WHERE seq > ?"
            args: tuple = (after,)
            if job_id is not None:
                sql, args = sql + " AND job_id = ?", (after, job_id)
            rows = self._exec(sql + " ORDER BY seq LIMIT ?", (*args, page))
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1][2]

    def record_bag_file(self, job_id: str, sink: str, name: str, key: str, size: int,
                        digests: dict[str, Any]) -> None:
        self._exec_write("INSERT OR REPLACE INTO bags (job_id, sink, name, key, size, digests,"
                   " stored_at) VALUES (?,?,?,?,?,?,?)",
                   (job_id, sink, name, key, size, json.dumps(digests), time.time()))

    def bag_files(self, job_id: str | None = None,
                  sink: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT job_id, sink, name, key, size, digests FROM bags WHERE 1=1", []
        for col, val in (("job_id", job_id), ("sink", sink)):
            if val is not None:
                sql += f" AND {col}=?"
                args.append(val)
        cols = ("job_id", "sink", "name", "key", "size", "digests")
        out = [dict(zip(cols, r)) for r in self._exec(sql + " ORDER BY job_id, sink, name",
                                                       args)]
        for d in out:
            d["digests"] = json.loads(d["digests"])
        return out

    def copy_rows(self, *, sink: str | None = None, job_id: str | None = None,
                  since: float | None = None) -> list[dict[str, Any]]:
        """Stored copies with the time of their last fixity check (None if never)."""
        sql = ("SELECT c.job_id, c.path, c.sink, c.key, c.location, c.size, c.received,"
               " c.stored, c.verified, c.stored_at, f.checked_at, j.project_id FROM copies c"
               " LEFT JOIN fixity f ON f.job_id=c.job_id AND f.path=c.path AND f.sink=c.sink"
               " LEFT JOIN jobs j ON j.job_id=c.job_id WHERE 1=1")
        args: list[Any] = []
        for cond, val in (("c.sink=?", sink), ("c.job_id=?", job_id), ("c.stored_at>=?", since)):
            if val is not None:
                sql += f" AND {cond}"
                args.append(val)
        cols = ("job_id", "path", "sink", "key", "location", "size", "received", "stored",
                "verified", "stored_at", "checked_at", "project_id")
        out = [dict(zip(cols, r)) for r in self._exec(sql + " ORDER BY c.job_id, c.path", args)]
        for d in out:
            d["received"], d["stored"] = json.loads(d["received"]), json.loads(d["stored"])
            d["verified"] = bool(d["verified"])
        return out

    def record_fixity(self, job_id: str, path: str, sink: str, ok: bool, message: str,
                      data: dict[str, Any]) -> None:
        """The outcome of one fixity check: rotation state plus an audit record."""
        now = time.time()
        self._tx([(_PUT_FIXITY, (job_id, path, sink, now, int(ok), message)),
                  (_ADD_EVENT, (now, "fixity", job_id, path, sink, message))],
                 audit={"kind": "fixity", "job_id": job_id, "path": path, "sink": sink,
                        "message": message, "data": {"ok": ok, **data}})

    def job_rows(self, job_id: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT job_id, project_id, status, state FROM jobs", ()
        if job_id is not None:
            sql, args = sql + " WHERE job_id=?", (job_id,)
        return [dict(zip(("job_id", "project_id", "status", "state"), r))
                for r in self._exec(sql + " ORDER BY job_id", args)]

    # -- reporting
    def summary(self) -> dict[str, Any]:
        states = dict(self._exec("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        per_sink = {s: {"objects": n, "bytes": b or 0} for s, n, b in self._exec(
            "SELECT sink, COUNT(*), SUM(size) FROM copies GROUP BY sink")}
        failing = [dict(zip(("job_id", "state", "error"), r)) for r in self._exec(
            "SELECT job_id, state, error FROM jobs WHERE state IN (?, ?) ORDER BY job_id",
            (INCOMPLETE, LOST))]
        warned = [dict(zip(("job_id", "expires_at", "message"), r)) for r in self._exec(
            "SELECT j.job_id, j.expires_at, MAX(e.message) FROM jobs j JOIN events e"
            " ON e.job_id = j.job_id AND e.kind = 'expiry_warning'"
            " WHERE j.state IN (?, ?) GROUP BY j.job_id ORDER BY j.expires_at",
            (INCOMPLETE, WAITING))]
        return {"jobs": states, "sinks": per_sink, "problems": failing,
                "expiry_warnings": warned, "pending_writers": len(self.list_pending())}

    def open_job_rows(self, states: Iterable[str]) -> list[tuple]:
        """``(job_id, project_id, status, state, expires_at, raw, first_seen)`` of every
        job in ``states`` (watch mode and metrics)."""
        states = tuple(states)
        return self._exec(
            "SELECT job_id, project_id, status, state, expires_at, raw, first_seen FROM jobs"
            f" WHERE state IN ({','.join('?' * len(states))})", states)

    def count_events(self, kind: str) -> int:
        return self._exec("SELECT COUNT(*) FROM events WHERE kind=?", (kind,))[0][0]

    def jobs_with_event(self, kind: str) -> set[str]:
        return {r[0] for r in self._exec(
            "SELECT DISTINCT job_id FROM events WHERE kind=? AND job_id IS NOT NULL", (kind,))}

    def job_report(self, job_id: str) -> dict[str, Any]:
        cols = ("path", "sink", "key", "location", "size", "received", "stored",
                "provider_checksum", "chain", "verified")
        rows = self._exec(f"SELECT {', '.join(cols)} FROM copies WHERE job_id=? ORDER BY path,"
                          " sink", (job_id,))
        out = []
        for r in rows:
            d = dict(zip(cols, r))
            for k in ("received", "stored", "provider_checksum", "chain"):
                d[k] = json.loads(d[k]) if d[k] else None
            d["verified"] = bool(d["verified"])
            out.append(d)
        arts = [dict(zip(("path", "kind", "key", "filename", "size", "state", "error"), r))
                for r in self._exec("SELECT path, kind, key, filename, size, state, error FROM"
                                    " artifacts WHERE job_id=? ORDER BY path", (job_id,))]
        return {"artifacts": arts, "copies": out}

    def close(self) -> None:
        self._writer.close()
        with self._lock:
            self._db.close()


def open_ledger(state_dir: str | Path) -> SQLiteLedger:
    return SQLiteLedger(Path(state_dir) / "ledger.sqlite")
