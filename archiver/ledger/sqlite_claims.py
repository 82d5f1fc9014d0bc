"""Claims, leases and workers on the SQLite ledger (schema 2).

Every method (and those of :mod:`archiver.ledger.coordination`, over ``_wq`` and
``_tx_now`` below) runs in one ``BEGIN IMMEDIATE`` transaction, so claimers in all processes
sharing the file are serialised and read the lease columns they then write: no two
workers can hold one job. The rules (free lease, lost leases, parking) are
:func:`archiver.ledger.claims.decide`; "now" is the host clock. Method contracts are on
:class:`archiver.ledger.protocols.RunLedger`.

A mixin of :class:`~archiver.ledger.sqlite.SQLiteLedger`: it uses its connection
(``_db``), audit chain (``_chain``) and write paths (``_write``, ``_write_now``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from ..errors import LeaseLost
from ..model import Job
from .claims import LEASE_LOST_EVENT, PARKED_EVENT, LeaseState, claimable, decide, parked_message
from .facts import expires_ts, job_facts
from .rows import Claim, ClaimRefused, WorkerId, pid_alive
from .sqlite_sql import ADD_EVENT, LEASE_STATE, UPSERT_QUEUED
from .states import CLAIMABLE, INCOMPLETE, QUEUED, SETTLED, WAITING


def holder_dead(owner: str | None) -> bool:
    """Is the holder a worker of this host whose process is gone? (SQLite ledgers are
    shared on one host only, so its pid is the truth; a pid reused since reads as alive,
    which only means waiting for the lease to run out. A worker in another pid namespace
    under the same host name would read as dead: its lease is taken over, and fencing
    stops it from recording anything.)"""
    parsed = WorkerId.parse(owner) if owner else None
    return parsed is not None and parsed.local and not pid_alive(parsed.pid)


class SQLiteClaims:
    """Workers, claims and fenced finishes; see the module docstring."""

    _db: Any
    _chain: Any

    # ------------------------------------------------------------------ helpers
    def _lease_state(self, job_id: str) -> LeaseState | None:
        row = self._db.execute(LEASE_STATE + " WHERE job_id=?", (job_id,)).fetchone()
        return None if row is None else LeaseState(row[0], row[1], row[2], bool(row[3]),
                                                   row[4], row[5], holder_dead(row[1]))

    def _expire_dead_holders(self, now: float) -> None:
        """Live leases of holders known dead (this host, pid gone) run out now, so
        ``claim_next`` sees them like any lease that ran out."""
        owners = [r[0] for r in self._db.execute(
            "SELECT DISTINCT owner FROM jobs WHERE owner IS NOT NULL AND lease_until >= ?",
            (now,))]
        for owner in owners:
            if holder_dead(owner):
                self._db.execute("UPDATE jobs SET lease_until=? WHERE owner=?",
                                 (now - 0.001, owner))

    def _upsert_queued(self, job: Job, now: float) -> None:
        """The job's row, refreshed from ``job``: new rows are queued, waiting ones become
        queued, any other state is kept (a settled job is never downgraded)."""
        before = self._db.execute("SELECT state FROM jobs WHERE job_id=?", (job.id,)).fetchone()
        self._db.execute(UPSERT_QUEUED, (job.id, job.project_id, job.status, QUEUED,
                                          job.expires_at, json.dumps(job.raw, sort_keys=True),
                                          now, now, expires_ts(job.expires_at)))
        if before is None or before[0] == WAITING:
            self._chain.append("job", job_id=job.id, message=QUEUED,
                               data=job_facts(job, QUEUED, None))

    def _take(self, job_id: str, row: LeaseState, worker_id: str, ttl: float, now: float, *,
              max_lost: int, force: bool, ignore_backoff: bool = False) -> Claim | ClaimRefused:
        decision = decide(row, now, max_lost=max_lost, force=force,
                          ignore_backoff=ignore_backoff)
        if decision.action == "refuse":
            return ClaimRefused(decision.reason or "held", decision.holder)
        if decision.action == "park":
            self._park(job_id, row, decision.lost_leases, now)
            return ClaimRefused("parked")
        self._db.execute("UPDATE jobs SET owner=?, lease_until=?, attempts=attempts+1,"
                         " lost_leases=?, parked=0, claimed_at=? WHERE job_id=?",
                         (worker_id, now + ttl, decision.lost_leases, now, job_id))
        if row.owner is not None and row.owner != worker_id and not force:
            # a lost lease: its holder died or stalled (metrics and alerts count these)
            message = f"lease of {row.owner} taken over by {worker_id}"
            self._db.execute(ADD_EVENT, (now, LEASE_LOST_EVENT, job_id, None, None, message))
            self._chain.append(LEASE_LOST_EVENT, job_id=job_id, message=message,
                               data={"lost_leases": decision.lost_leases,
                                     "last_owner": row.owner})
        project, status, raw, attempts, lost = self._db.execute(
            "SELECT project_id, status, raw, attempts, lost_leases FROM jobs WHERE job_id=?",
            (job_id,)).fetchone()
        data = json.loads(raw) if raw else {}
        return Claim(job_id, project, status, data if isinstance(data, dict) else {},
                     attempts, lost)

    def _park(self, job_id: str, row: LeaseState, lost: int, now: float) -> None:
        """Too many lost leases: incomplete, parked, and a "parked" event (an alert)."""
        message = parked_message(lost)
        self._db.execute("UPDATE jobs SET parked=1, state=?, error=?, owner=NULL,"
                         " lease_until=NULL, lost_leases=?, updated=? WHERE job_id=?",
                         (INCOMPLETE, message, lost, now, job_id))
        project, status, expires_at = self._db.execute(
            "SELECT project_id, status, expires_at FROM jobs WHERE job_id=?", (job_id,)
        ).fetchone()
        self._chain.append("job", job_id=job_id, message=INCOMPLETE, data={
            "project_id": project, "status": status, "state": INCOMPLETE,
            "expires_at": expires_at, "error": message})
        self._db.execute(ADD_EVENT, (now, PARKED_EVENT, job_id, None, None, message))
        self._chain.append(PARKED_EVENT, job_id=job_id, message=message,
                           data={"lost_leases": lost, "last_owner": row.owner})

    # ------------------------------------------------------------------ workers
    def register_worker(self, worker: WorkerId) -> None:
        now = time.time()
        self._write(lambda: self._db.execute(
            "INSERT INTO workers (worker_id, host, pid, started, heartbeat_at)"
            " VALUES (?,?,?,?,?) ON CONFLICT(worker_id) DO UPDATE SET host=excluded.host,"
            " pid=excluded.pid, heartbeat_at=excluded.heartbeat_at",
            (worker.id, worker.host, worker.pid, now, now)))

    def unregister_worker(self, worker_id: str) -> None:
        def work() -> None:
            self._db.execute("UPDATE jobs SET owner=NULL, lease_until=NULL WHERE owner=?",
                             (worker_id,))
            self._db.execute("DELETE FROM workers WHERE worker_id=?", (worker_id,))

        self._write(work)

    def heartbeat(self, worker_id: str, ttl: float) -> set[str]:
        def work() -> set[str]:
            now = time.time()
            cur = self._db.execute("UPDATE workers SET heartbeat_at=? WHERE worker_id=?",
                                   (now, worker_id))
            parsed = WorkerId.parse(worker_id)
            if cur.rowcount == 0 and parsed is not None:  # forgotten by a cleanup: alive
                self._db.execute("INSERT INTO workers (worker_id, host, pid, heartbeat_at)"
                                 " VALUES (?,?,?,?)", (worker_id, parsed.host, parsed.pid, now))
            self._db.execute("UPDATE jobs SET lease_until=? WHERE owner=?",
                             (now + ttl, worker_id))
            return {r[0] for r in self._db.execute("SELECT job_id FROM jobs WHERE owner=?",
                                                   (worker_id,))}

        return self._write_now(work, "heartbeat")

    def forget_dead_workers(self, older_than: float) -> list[str]:
        def work() -> list[str]:
            cutoff = time.time() - older_than
            dead = [r[0] for r in self._db.execute(
                "SELECT worker_id FROM workers WHERE heartbeat_at IS NULL OR heartbeat_at < ?"
                " ORDER BY worker_id", (cutoff,))]
            self._db.executemany("DELETE FROM workers WHERE worker_id=?", [(w,) for w in dead])
            return dead

        return self._write_now(work, "forget_dead_workers")

    def expire_worker(self, worker_id: str) -> int:
        def work() -> int:
            now = time.time()
            cur = self._db.execute("UPDATE jobs SET lease_until=? WHERE owner=?",
                                   (now - 0.001, worker_id))
            self._db.execute("DELETE FROM workers WHERE worker_id=?", (worker_id,))
            return cur.rowcount

        return self._write_now(work, "expire_worker")

    # ------------------------------------------------------------------ claims
    def enqueue(self, jobs: Iterable[Job]) -> int:
        jobs = list(jobs)

        def work() -> int:
            now, ids = time.time(), []
            for job in jobs:
                self._upsert_queued(job, now)
                ids.append(job.id)
            return sum(1 for j in dict.fromkeys(ids)
                       if claimable(self._lease_state(j), now))

        return self._write_now(work, "enqueue") if jobs else 0

    def claim(self, job: Job, worker_id: str, ttl: float, *, max_lost: int,
              force: bool = False, ignore_backoff: bool = False) -> Claim | ClaimRefused:
        def work() -> Claim | ClaimRefused:
            now = time.time()
            self._upsert_queued(job, now)
            return self._take(job.id, self._lease_state(job.id), worker_id, ttl, now,
                              max_lost=max_lost, force=force, ignore_backoff=ignore_backoff)

        return self._write_now(work, "claim")

    def claim_next(self, worker_id: str, ttl: float, *, max_lost: int,
                   ignore_backoff: bool = False,
                   claimed_before: float | None = None) -> Claim | None:
        def work() -> Claim | None:
            now = time.time()
            sql = (f"SELECT job_id FROM jobs WHERE state IN ({','.join('?' * len(CLAIMABLE))})"
                   " AND parked=0 AND (owner IS NULL OR lease_until IS NULL OR lease_until < ?)")
            args: list[Any] = [*CLAIMABLE, now]
            if not ignore_backoff:
                sql += " AND (not_before IS NULL OR not_before <= ?)"
                args.append(now)
            if claimed_before is not None:
                # A job still owned here has a lapsed lease: its holder died or stalled
                # mid-attempt, so that attempt never ended; it is taken over (a lost
                # lease, bounded by parking) even if it was claimed since then.
                sql += " AND (claimed_at IS NULL OR claimed_at < ? OR owner IS NOT NULL)"
                args.append(claimed_before)
            sql += " ORDER BY expires_ts IS NULL, expires_ts, job_id LIMIT ?"
            self._expire_dead_holders(now)
            tried: set[str] = set()
            while True:
                rows = self._db.execute(sql, (*args, len(tried) + 1)).fetchall()
                fresh = [r[0] for r in rows if r[0] not in tried]
                if not fresh:
                    return None
                tried.add(fresh[0])
                result = self._take(fresh[0], self._lease_state(fresh[0]), worker_id, ttl,
                                    now, max_lost=max_lost, force=False,
                                    ignore_backoff=ignore_backoff)
                if result.ok:
                    return result
                # parked just now: try the next one

        return self._write_now(work, "claim_next")

    def finish_job(self, job: Job, worker_id: str, state: str, error: str | None = None, *,
                   not_before: float | None = None) -> None:
        def work() -> None:
            row = self._db.execute("SELECT owner FROM jobs WHERE job_id=?", (job.id,)).fetchone()
            holder = row[0] if row else None
            if holder != worker_id:
                raise LeaseLost(job.id, holder)  # rolls the transaction (and batch) back
            now = time.time()
            self._db.execute(*self._job_statement(job, state, error, now))
            self._db.execute("UPDATE jobs SET owner=NULL, lease_until=NULL, not_before=?,"
                             " lost_leases=CASE WHEN ? THEN 0 ELSE lost_leases END"
                             " WHERE job_id=?", (not_before, state in SETTLED, job.id))
            self._chain.append("job", job_id=job.id, message=state,
                               data=job_facts(job, state, error))

        self._write(work)

    # ------------------------------------------------------------------ coordination hooks
    # (named leases and budgets: archiver.ledger.coordination, run inside the group commit)
    def _wq(self, sql: str, args: tuple = ()) -> Any:
        return self._db.execute(sql, args)

    def _tx_now(self) -> float:
        return time.time()

    def release(self, job_id: str, worker_id: str) -> bool:
        def work() -> bool:
            cur = self._db.execute("UPDATE jobs SET owner=NULL, lease_until=NULL"
                                   " WHERE job_id=? AND owner=?", (job_id, worker_id))
            return cur.rowcount > 0

        return self._write_now(work, "release")
