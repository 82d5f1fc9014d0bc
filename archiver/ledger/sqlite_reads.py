"""The read side of the SQLite ledger, shared by :class:`SQLiteLedger` and the dry-run
:class:`ReadOnlyLedger`.

A mixin over one method, ``_exec(sql, args) -> list[tuple]``, so both handles answer
every question the same way. Every read goes through :meth:`SQLiteReads._read`, whose SQL
is written with ``?`` placeholders and portable SQL: another backend (the PostgreSQL
plugin) reuses these reads by translating placeholders there and overriding only the
queries that differ. ``_claims_schema`` tells whether the file has the columns of
schema 2 (claims and leases): a read-only handle may look at a version-1 ledger it must
not upgrade, and then reads what is there (no owners, no workers).

Reads that compare with "now" (named leases, the dispatchable queue) take it from
``_clock()`` (the host's; PostgreSQL's is the database's), and the SQLite rule that a
holder whose pid is gone on this host has no live lease comes from ``_dead_owners(now)``
(PostgreSQL never judges a holder by its pid: none).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ..model import Job

from .rows import (
    AuditRow,
    BagFileRow,
    CopyRow,
    EventRow,
    JobRow,
    LeaseRow,
    OpenJobRow,
    PendingRow,
    WorkerId,
    WorkerRow,
    pid_alive,
)
from .sqlite_claims import holder_dead
from .states import CLAIMABLE, INCOMPLETE, LOST, QUEUED, WAITING

_JOB_COLS = ("job_id, project_id, status, state, expires_at, error, first_seen, updated,"
             " archived_at")
_LEASE_COLS = ", owner, lease_until, attempts, lost_leases, not_before, parked"


def _json(text: str | None, default: Any = None) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


class SQLiteReads:
    """Every read of the ledger (see :mod:`archiver.ledger.protocols` for what each means)."""

    _claims_schema = True

    def _exec(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:  # pragma: no cover
        raise NotImplementedError

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        """A read, SQL written with ``?`` placeholders (SQLite's own: passed as it is)."""
        return self._exec(sql, args)

    def _clock(self) -> float:
        """"Now" for the reads that compare with it: the host clock (SQLite's lease clock)."""
        return time.time()

    def _dead_owners(self, now: float) -> list[str]:
        """Holders of live job leases known dead: workers of this host whose pid is gone
        (SQLite ledgers are shared on one host; ``claim_next`` takes their jobs at once)."""
        return [o for (o,) in self._read("SELECT DISTINCT owner FROM jobs WHERE owner IS NOT"
                                          " NULL AND lease_until >= ?", (now,)) if holder_dead(o)]

    def _one(self, sql: str, args: Iterable[Any] = (), default: Any = 0) -> Any:
        rows = self._read(sql, args)
        return rows[0][0] if rows and rows[0][0] is not None else default

    # -- jobs
    def job_states(self) -> dict[str, str]:
        return dict(self._read("SELECT job_id, state FROM jobs"))

    def job_rows(self, job_id: str | None = None) -> list[JobRow]:
        cols = _JOB_COLS + (_LEASE_COLS if self._claims_schema else "")
        sql, args = f"SELECT {cols} FROM jobs", ()
        if job_id is not None:
            sql, args = sql + " WHERE job_id=?", (job_id,)
        out = []
        for r in self._read(sql + " ORDER BY job_id", args):
            lease = r[9:]
            out.append(JobRow(*r[:9], *lease[:5], bool(lease[5])) if lease else JobRow(*r))
        return out

    def open_job_rows(self, states: Iterable[str] = (INCOMPLETE, WAITING)) -> list[OpenJobRow]:
        states = tuple(states)
        if not states:
            return []
        rows = self._read(
            "SELECT job_id, project_id, status, state, expires_at, raw, first_seen FROM jobs"
            f" WHERE state IN ({','.join('?' * len(states))}) ORDER BY job_id", states)
        out = []
        for job_id, project, status, state, expires, raw, first_seen in rows:
            data = _json(raw, {})
            out.append(OpenJobRow(job_id, project, status, state, expires,
                                  data if isinstance(data, dict) else {}, first_seen))
        return out

    # -- copies
    def copies(self, job_id: str) -> dict[tuple[str, str], CopyRow]:
        rows = self._read("SELECT job_id, path, sink, key, size, received, stored, verified,"
                          " location, provider_checksum, stored_at FROM copies WHERE job_id=?",
                          (job_id,))
        return {(r[1], r[2]): CopyRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]),
                                      json.loads(r[6]), bool(r[7]), r[8], _json(r[9]), r[10])
                for r in rows}

    def copy_rows(self, *, sink: str | None = None, job_id: str | None = None,
                  since: float | None = None) -> list[CopyRow]:
        sql = ("SELECT c.job_id, c.path, c.sink, c.key, c.size, c.received, c.stored,"
               " c.verified, c.location, c.provider_checksum, c.stored_at, f.checked_at,"
               " j.project_id FROM copies c"
               " LEFT JOIN fixity f ON f.job_id=c.job_id AND f.path=c.path AND f.sink=c.sink"
               " LEFT JOIN jobs j ON j.job_id=c.job_id WHERE 1=1")
        args: list[Any] = []
        for cond, val in (("c.sink=?", sink), ("c.job_id=?", job_id), ("c.stored_at>=?", since)):
            if val is not None:
                sql += f" AND {cond}"
                args.append(val)
        return [CopyRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), json.loads(r[6]),
                        bool(r[7]), r[8], _json(r[9]), r[10], r[11], r[12])
                for r in self._read(sql + " ORDER BY c.job_id, c.path, c.sink", args)]

    # -- pending writers
    def list_pending(self) -> list[PendingRow]:
        if not self._claims_schema:
            return [PendingRow(*r) for r in self._read(
                "SELECT id, sink, token, job_id, path, started FROM pending ORDER BY id")]
        out = []
        for r in self._read(
                "SELECT p.id, p.sink, p.token, p.job_id, p.path, p.started, p.owner, w.host,"
                " w.pid, w.heartbeat_at, w.worker_id FROM pending p LEFT JOIN workers w"
                " ON w.worker_id = p.owner ORDER BY p.id"):
            host, pid = r[7], r[8]
            if r[6] is not None and r[10] is None:  # the worker's row is gone
                parsed = WorkerId.parse(r[6])
                host, pid = (parsed.host, parsed.pid) if parsed else (None, None)
            out.append(PendingRow(*r[:7], host, pid, r[9]))
        return out

    # -- events
    def event_rows(self, job_id: str | None = None, limit: int = 1000) -> list[EventRow]:
        sql = "SELECT id, ts, kind, job_id, path, sink, message FROM events"
        args: tuple = ()
        if job_id:
            sql, args = sql + " WHERE job_id=?", (job_id,)
        rows = self._read(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [EventRow(*r) for r in reversed(rows)]

    def events(self, job_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        return [e.as_dict() for e in self.event_rows(job_id, limit)]

    def count_events(self, kind: str) -> int:
        return self._one("SELECT COUNT(*) FROM events WHERE kind=?", (kind,))

    def jobs_with_event(self, kind: str) -> set[str]:
        return {r[0] for r in self._read(
            "SELECT DISTINCT job_id FROM events WHERE kind=? AND job_id IS NOT NULL", (kind,))}

    # -- audit chain, bags
    def audit_rows(self, job_id: str | None = None, after: int = 0,
                   page: int = 5000) -> Iterator[AuditRow]:
        while True:
            sql = "SELECT line, hash, seq FROM audit WHERE seq > ?"
            args: tuple = (after,)
            if job_id is not None:
                sql, args = sql + " AND job_id = ?", (after, job_id)
            rows = self._read(sql + " ORDER BY seq LIMIT ?", (*args, page))
            for r in rows:
                yield AuditRow(*r)
            if len(rows) < page:
                return
            after = rows[-1][2]

    def bag_files(self, job_id: str | None = None,
                  sink: str | None = None) -> list[BagFileRow]:
        sql, args = "SELECT job_id, sink, name, key, size, digests FROM bags WHERE 1=1", []
        for col, val in (("job_id", job_id), ("sink", sink)):
            if val is not None:
                sql += f" AND {col}=?"
                args.append(val)
        return [BagFileRow(*r[:5], json.loads(r[5]))
                for r in self._read(sql + " ORDER BY job_id, sink, name", args)]

    # -- workers
    def workers(self) -> list[WorkerRow]:
        if not self._claims_schema:
            return []
        held: dict[str, list[tuple[str, float | None]]] = {}
        for owner, job_id, until in self._read("SELECT owner, job_id, lease_until FROM jobs"
                                               " WHERE owner IS NOT NULL ORDER BY job_id"):
            held.setdefault(owner, []).append((job_id, until))
        out = []
        for r in self._read("SELECT worker_id, host, pid, started, heartbeat_at FROM workers"
                            " ORDER BY worker_id"):
            leases = tuple(held.get(r[0], ()))
            out.append(WorkerRow(*r, tuple(j for j, _ in leases), leases))
        return out

    def lease_rows(self, job_ids: Iterable[str]) -> list[LeaseRow]:
        ids = list(dict.fromkeys(job_ids))
        if not self._claims_schema:
            return []
        out = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            out += self._read(
                "SELECT j.job_id, j.state, j.parked, j.error, j.owner, j.lease_until,"
                " j.attempts, j.lost_leases, j.not_before, j.claimed_at, w.heartbeat_at,"
                " w.worker_id, w.host, w.pid FROM jobs j LEFT JOIN workers w"
                f" ON w.worker_id = j.owner WHERE j.job_id IN ({','.join('?' * len(chunk))})",
                chunk)
        rows, this_host = [], socket.gethostname()
        for r in sorted(out):
            registered, host, pid = r[11] is not None, r[12], r[13]
            alive = registered and (host != this_host or pid is None or pid_alive(pid))
            rows.append(LeaseRow(r[0], r[1], bool(r[2]), *r[3:11], alive))
        return rows

    # -- reports
    def summary(self) -> dict[str, Any]:
        states = dict(self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        per_sink = {s: {"objects": n, "bytes": b or 0} for s, n, b in self._read(
            "SELECT sink, COUNT(*), CAST(SUM(size) AS BIGINT) FROM copies GROUP BY sink")}
        failing = [dict(zip(("job_id", "state", "error"), r)) for r in self._read(
            "SELECT job_id, state, error FROM jobs WHERE state IN (?, ?) ORDER BY job_id",
            (INCOMPLETE, LOST))]
        warned = [dict(zip(("job_id", "expires_at", "message"), r)) for r in self._read(
            "SELECT j.job_id, j.expires_at, MAX(e.message) FROM jobs j JOIN events e"
            " ON e.job_id = j.job_id AND e.kind = 'expiry_warning'"
            " WHERE j.state IN (?, ?, ?) GROUP BY j.job_id ORDER BY j.expires_at",
            (INCOMPLETE, WAITING, QUEUED))]
        return {"jobs": states, "sinks": per_sink, "problems": failing,
                "expiry_warnings": warned, "pending_writers": len(self.list_pending())}

    def job_report(self, job_id: str) -> dict[str, Any]:
        cols = ("path", "sink", "key", "location", "size", "received", "stored",
                "provider_checksum", "chain", "verified")
        rows = self._read(f"SELECT {', '.join(cols)} FROM copies WHERE job_id=? ORDER BY path,"
                          " sink", (job_id,))
        out = []
        for r in rows:
            d = dict(zip(cols, r))
            for k in ("received", "stored", "provider_checksum", "chain"):
                d[k] = json.loads(d[k]) if d[k] else None
            d["verified"] = bool(d["verified"])
            out.append(d)
        arts = [dict(zip(("path", "kind", "key", "filename", "size", "state", "error"), r))
                for r in self._read("SELECT path, kind, key, filename, size, state, error FROM"
                                    " artifacts WHERE job_id=? ORDER BY path", (job_id,))]
        return {"artifacts": arts, "copies": out}

    # -- the queue and fleet coordination (see RunLedger / ReportLedger)
    def _free_lease(self, now: float) -> tuple[str, list[Any]]:
        """SQL (and its args) of "this job's lease is free": nobody holds it, it ran out,
        or its holder is known dead."""
        dead = self._dead_owners(now)
        sql = "(owner IS NULL OR lease_until IS NULL OR lease_until < ?"
        if dead:
            sql += f" OR owner IN ({','.join('?' * len(dead))})"
        return sql + ")", [now, *dead]

    def dispatchable(self, limit: int) -> list[tuple[str, str | None]]:
        if not self._claims_schema or limit <= 0:
            return []
        now = self._clock()
        free, args = self._free_lease(now)
        return [(r[0], r[1]) for r in self._read(
            f"SELECT job_id, expires_at FROM jobs WHERE state IN ({','.join('?' * len(CLAIMABLE))})"
            f" AND parked = ? AND {free} AND (not_before IS NULL OR not_before <= ?)"
            " ORDER BY expires_ts IS NULL, expires_ts, job_id LIMIT ?",
            (*CLAIMABLE, False, *args, now, int(limit)))]

    def queued_job(self, job_id: str) -> Job | None:
        rows = self._read("SELECT job_id, project_id, status, raw FROM jobs WHERE job_id = ?",
                          (job_id,))
        if not rows:
            return None
        raw = _json(rows[0][3], {})
        return Job(rows[0][0], rows[0][1] or "", rows[0][2] or "",
                   raw if isinstance(raw, dict) else {})

    def queue_stats(self) -> dict[str, Any]:
        states = f"state IN ({','.join('?' * len(CLAIMABLE))})"
        if not self._claims_schema:  # version 1 (read-only): no leases, no parking yet
            n, first = self._read(f"SELECT COUNT(*), MIN(first_seen) FROM jobs WHERE {states}",
                                  CLAIMABLE)[0]
            return {"queued": n or 0, "leased": 0, "parked": 0, "claims_total": 0,
                    "oldest_queued_seconds": None if first is None
                    else max(0.0, time.time() - first)}
        now = self._clock()
        free, args = self._free_lease(now)
        waiting = f"{states} AND parked = ? AND {free}"
        queued, leased, parked, first, claims = self._read(
            f"SELECT SUM(CASE WHEN {waiting} THEN 1 ELSE 0 END),"
            f" SUM(CASE WHEN owner IS NOT NULL AND NOT {free} THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN parked = ? THEN 1 ELSE 0 END),"
            f" MIN(CASE WHEN {waiting} THEN first_seen END), SUM(attempts) FROM jobs",
            (*CLAIMABLE, False, *args, *args, True, *CLAIMABLE, False, *args))[0]
        # first_seen is a writer's clock (the host's): its age is measured on this host
        return {"queued": int(queued or 0), "leased": int(leased or 0),
                "parked": int(parked or 0), "claims_total": int(claims or 0),
                "oldest_queued_seconds": None if first is None
                else max(0.0, time.time() - first)}

    def lease_holder(self, name: str) -> tuple[str, float] | None:
        if not self._claims_schema:
            return None
        rows = self._read("SELECT owner, lease_until FROM leases WHERE name = ?", (name,))
        if not rows or rows[0][1] is None:
            return None
        left = rows[0][1] - self._clock()
        return (rows[0][0], left) if left >= 0 else None
