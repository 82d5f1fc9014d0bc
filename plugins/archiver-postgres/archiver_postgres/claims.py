"""Claims, leases and workers on the PostgreSQL ledger.

The rules are :func:`archiver.ledger.claims.decide` and ``claimable``, the same as
SQLite's; the SQL differs. Every method runs in one READ COMMITTED transaction on the
writer connection and locks the job rows it decides on (``SELECT ... FOR UPDATE``), so
two claimers of one job are serialised by the row lock, and the second sees the first's
lease. ``claim_next`` picks with ``FOR UPDATE SKIP LOCKED``: a job another worker is
claiming right now is skipped, not waited for. "Now" is the database's clock
(``clock_timestamp()``), one clock for every host; a holder is never judged dead by its
pid (other hosts' pids mean nothing here): its lease runs out, or its supervisor expires
it (``expire_worker``). Method contracts are on
:class:`archiver.ledger.protocols.RunLedger`; the events and audit records written are
exactly SQLite's (:mod:`archiver.ledger.sqlite_claims`).

A mixin of :class:`~.ledger.PostgresLedger`: it uses its statement helper ``_q``, its
audit buffer ``_audit`` and its write paths ``_write`` / ``_write_now``. It also gives the
core's :class:`archiver.ledger.coordination.Coordination` (named leases, budgets: the same
statements and rules as SQLite's) its hooks: ``_wq``, ``_tx_now`` and ``_lock_row``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from archiver.errors import LeaseLost
from archiver.ledger.claims import (
    LEASE_LOST_EVENT,
    PARKED_EVENT,
    LeaseState,
    claimable,
    decide,
    parked_message,
)
from archiver.ledger.facts import expires_ts, job_facts
from archiver.ledger.rows import Claim, ClaimRefused, WorkerId
from archiver.ledger.states import CLAIMABLE, INCOMPLETE, QUEUED, SETTLED, WAITING
from archiver.model import Job

from .sql import ADD_EVENT, INSERT_QUEUED, LEASE_STATE, NOW, REFRESH_QUEUED


def _lease(row: tuple) -> tuple[LeaseState, float]:
    """A LEASE_STATE row: the job's lease columns and the database's now."""
    return LeaseState(row[0], row[1], row[2], bool(row[3]), row[4], row[5]), row[6]


class PostgresClaims:
    """Workers, claims and fenced finishes; see the module docstring."""

    _q: Any        # the ledger's: one statement on the writer connection
    _audit: Any    # the ledger's: an audit record, appended when the transaction commits
    _write: Any
    _write_now: Any
    _synced: Any   # the ledger's: a statement's cursor once it answered (rowcount)
    _job_statement: Any

    _lock_row = " FOR UPDATE"  # Coordination: the budget row is locked until commit

    # ------------------------------------------------------------------ coordination hooks
    def _wq(self, sql: str, args: tuple = ()) -> Any:
        # Coordination's statements are written with "?" placeholders; psycopg takes "%s".
        return self._q(sql.replace("?", "%s"), args)

    def _tx_now(self) -> float:
        return self._q(f"SELECT {NOW}").fetchone()[0]

    # ------------------------------------------------------------------ helpers
    def _lease_state(self, job_id: str) -> tuple[LeaseState, float] | None:
        row = self._q(LEASE_STATE, (job_id,)).fetchone()
        return None if row is None else _lease(row)

    def _upsert_queued(self, job: Job, now: float) -> None:
        """The job's row, refreshed from ``job``: a new row is queued, a waiting one
        becomes queued, any other state is kept; a "job" audit record when it became
        queued. The row is locked for the rest of the transaction."""
        raw = json.dumps(job.raw, sort_keys=True)
        inserted = self._q(INSERT_QUEUED, (job.id, job.project_id, job.status, QUEUED,
                                           job.expires_at, raw, now, now,
                                           expires_ts(job.expires_at))).fetchone()
        if inserted is None:
            before = self._q("SELECT state FROM jobs WHERE job_id=%s FOR UPDATE",
                             (job.id,)).fetchone()
            self._q(REFRESH_QUEUED, (job.project_id, job.status, job.expires_at, raw, now,
                                     expires_ts(job.expires_at), job.id))
            if before is None or before[0] != WAITING:
                return
        self._audit("job", job_id=job.id, message=QUEUED, data=job_facts(job, QUEUED, None))

    def _take(self, job_id: str, row: LeaseState, worker_id: str, ttl: float, now: float, *,
              max_lost: int, force: bool, ignore_backoff: bool = False) -> Claim | ClaimRefused:
        decision = decide(row, now, max_lost=max_lost, force=force,
                          ignore_backoff=ignore_backoff)
        if decision.action == "refuse":
            return ClaimRefused(decision.reason or "held", decision.holder)
        if decision.action == "park":
            self._park(job_id, row, decision.lost_leases, now)
            return ClaimRefused("parked")
        project, status, raw, attempts, lost = self._q(
            "UPDATE jobs SET owner=%s, lease_until=%s, attempts=attempts+1, lost_leases=%s,"
            " parked=false, claimed_at=%s WHERE job_id=%s"
            " RETURNING project_id, status, raw, attempts, lost_leases",
            (worker_id, now + ttl, decision.lost_leases, now, job_id)).fetchone()
        if row.owner is not None and row.owner != worker_id and not force:
            # a lost lease: its holder died or stalled (metrics and alerts count these)
            message = f"lease of {row.owner} taken over by {worker_id}"
            self._q(ADD_EVENT, (time.time(), LEASE_LOST_EVENT, job_id, None, None, message))
            self._audit(LEASE_LOST_EVENT, job_id=job_id, message=message,
                        data={"lost_leases": decision.lost_leases, "last_owner": row.owner})
        data = json.loads(raw) if raw else {}
        return Claim(job_id, project, status, data if isinstance(data, dict) else {},
                     attempts, lost)

    def _park(self, job_id: str, row: LeaseState, lost: int, now: float) -> None:
        """Too many lost leases: incomplete, parked, and a "parked" event (an alert)."""
        message = parked_message(lost)
        project, status, expires_at = self._q(
            "UPDATE jobs SET parked=true, state=%s, error=%s, owner=NULL, lease_until=NULL,"
            " lost_leases=%s, updated=%s WHERE job_id=%s"
            " RETURNING project_id, status, expires_at",
            (INCOMPLETE, message, lost, time.time(), job_id)).fetchone()
        self._audit("job", job_id=job_id, message=INCOMPLETE, data={
            "project_id": project, "status": status, "state": INCOMPLETE,
            "expires_at": expires_at, "error": message})
        self._q(ADD_EVENT, (time.time(), PARKED_EVENT, job_id, None, None, message))
        self._audit(PARKED_EVENT, job_id=job_id, message=message,
                    data={"lost_leases": lost, "last_owner": row.owner})

    # ------------------------------------------------------------------ workers
    def register_worker(self, worker: WorkerId) -> None:
        self._write(lambda: self._q(
            "INSERT INTO workers (worker_id, host, pid, started, heartbeat_at)"
            f" VALUES (%s, %s, %s, {NOW}, {NOW}) ON CONFLICT (worker_id) DO UPDATE SET"
            " host=EXCLUDED.host, pid=EXCLUDED.pid, heartbeat_at=EXCLUDED.heartbeat_at",
            (worker.id, worker.host, worker.pid)))

    def unregister_worker(self, worker_id: str) -> None:
        def work() -> None:
            self._q("UPDATE jobs SET owner=NULL, lease_until=NULL WHERE owner=%s",
                    (worker_id,))
            self._q("DELETE FROM workers WHERE worker_id=%s", (worker_id,))

        self._write(work)

    def heartbeat(self, worker_id: str, ttl: float) -> set[str]:
        def work() -> set[str]:
            cur = self._synced(self._q(f"UPDATE workers SET heartbeat_at={NOW}"
                                       " WHERE worker_id=%s", (worker_id,)))
            parsed = WorkerId.parse(worker_id)
            if cur.rowcount == 0 and parsed is not None:  # forgotten by a cleanup: alive
                self._q("INSERT INTO workers (worker_id, host, pid, heartbeat_at)"
                        f" VALUES (%s, %s, %s, {NOW}) ON CONFLICT (worker_id) DO NOTHING",
                        (worker_id, parsed.host, parsed.pid))
            return {r[0] for r in self._q(f"UPDATE jobs SET lease_until={NOW} + %s"
                                          " WHERE owner=%s RETURNING job_id",
                                          (ttl, worker_id))}

        return self._write_now(work, "heartbeat")

    def forget_dead_workers(self, older_than: float) -> list[str]:
        def work() -> list[str]:
            return sorted(r[0] for r in self._q(
                "DELETE FROM workers WHERE heartbeat_at IS NULL OR heartbeat_at <"
                f" {NOW} - %s RETURNING worker_id", (older_than,)))

        return self._write_now(work, "forget_dead_workers")

    def expire_worker(self, worker_id: str) -> int:
        def work() -> int:
            cur = self._synced(self._q(f"UPDATE jobs SET lease_until={NOW} - 0.001"
                                       " WHERE owner=%s", (worker_id,)))
            self._q("DELETE FROM workers WHERE worker_id=%s", (worker_id,))
            return cur.rowcount

        return self._write_now(work, "expire_worker")

    # ------------------------------------------------------------------ claims
    def enqueue(self, jobs: Iterable[Job]) -> int:
        # One row each, locked in id order (two enqueuers cannot deadlock on each other).
        by_id = {job.id: job for job in jobs}
        ordered = [by_id[j] for j in sorted(by_id)]

        def work() -> int:
            now = time.time()
            for job in ordered:
                self._upsert_queued(job, now)
            return sum(1 for r in self._q(
                "SELECT state, owner, lease_until, parked, lost_leases, not_before,"
                f" {NOW} FROM jobs WHERE job_id = ANY(%s)", (list(by_id),))
                if claimable(*_lease(r)))

        return self._write_now(work, "enqueue") if ordered else 0

    def claim(self, job: Job, worker_id: str, ttl: float, *, max_lost: int,
              force: bool = False, ignore_backoff: bool = False) -> Claim | ClaimRefused:
        def work() -> Claim | ClaimRefused:
            self._upsert_queued(job, time.time())
            row, now = self._lease_state(job.id)
            return self._take(job.id, row, worker_id, ttl, now, max_lost=max_lost,
                              force=force, ignore_backoff=ignore_backoff)

        return self._write_now(work, "claim")

    def claim_next(self, worker_id: str, ttl: float, *, max_lost: int,
                   ignore_backoff: bool = False,
                   claimed_before: float | None = None) -> Claim | None:
        sql = ("SELECT job_id, state, owner, lease_until, parked, lost_leases, not_before,"
               f" n.now FROM jobs CROSS JOIN (SELECT {NOW} AS now) n"
               " WHERE state = ANY(%s) AND NOT parked"
               " AND (owner IS NULL OR lease_until IS NULL OR lease_until < n.now)"
               " AND NOT (job_id = ANY(%s))")
        args: list[Any] = [list(CLAIMABLE)]
        if not ignore_backoff:
            sql += " AND (not_before IS NULL OR not_before <= n.now)"
        if claimed_before is not None:
            # A job still owned here has a lapsed lease: its holder died or stalled
            # mid-attempt, so that attempt never ended; it is taken over (a lost lease,
            # bounded by parking) even if it was claimed since then.
            sql += " AND (claimed_at IS NULL OR claimed_at < %s OR owner IS NOT NULL)"
        sql += (" ORDER BY expires_ts IS NULL, expires_ts, job_id"
                " LIMIT 1 FOR UPDATE OF jobs SKIP LOCKED")

        def work() -> Claim | None:
            tried: list[str] = []
            while True:
                row = self._q(sql, (*args, tried, *([claimed_before]
                                                      if claimed_before is not None else []))
                              ).fetchone()
                if row is None:
                    return None
                tried.append(row[0])
                lease, now = _lease(row[1:])
                result = self._take(row[0], lease, worker_id, ttl, now, max_lost=max_lost,
                                    force=False, ignore_backoff=ignore_backoff)
                if result.ok:
                    return result
                # parked just now: try the next one

        return self._write_now(work, "claim_next")

    def finish_job(self, job: Job, worker_id: str, state: str, error: str | None = None, *,
                   not_before: float | None = None) -> None:
        def work() -> None:
            row = self._q("SELECT owner FROM jobs WHERE job_id=%s FOR UPDATE",
                          (job.id,)).fetchone()
            holder = row[0] if row else None
            if holder != worker_id:
                raise LeaseLost(job.id, holder)  # rolls the transaction (and batch) back
            self._q(*self._job_statement(job, state, error, time.time()))
            self._q("UPDATE jobs SET owner=NULL, lease_until=NULL, not_before=%s,"
                    " lost_leases=CASE WHEN %s THEN 0 ELSE lost_leases END WHERE job_id=%s",
                    (not_before, state in SETTLED, job.id))
            self._audit("job", job_id=job.id, message=state, data=job_facts(job, state, error))

        self._write(work)

    def release(self, job_id: str, worker_id: str) -> bool:
        def work() -> bool:
            cur = self._synced(self._q("UPDATE jobs SET owner=NULL, lease_until=NULL"
                                       " WHERE job_id=%s AND owner=%s", (job_id, worker_id)))
            return cur.rowcount > 0

        return self._write_now(work, "release")
