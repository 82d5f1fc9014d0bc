"""The read side of the PostgreSQL ledger, shared by :class:`~.ledger.PostgresLedger` and
the dry-run :class:`~.ledger.PostgresReadOnlyLedger`.

The queries are the core's (:class:`archiver.ledger.sqlite_reads.SQLiteReads`, portable
SQL with ``?`` placeholders), so both backends give the same answers; this mixin only
translates placeholders for psycopg and overrides what PostgreSQL must answer differently.
``lease_rows()`` cannot look at pids on other hosts: a holder is alive while its worker
row exists and its heartbeat is younger than the lease TTL (and, on this host, its pid
runs).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from typing import Any

from archiver.ledger.rows import LeaseRow, pid_alive
from archiver.ledger.sqlite_reads import SQLiteReads

from .sql import NOW


class PostgresReads(SQLiteReads):
    """Every read of the ledger (see :mod:`archiver.ledger.protocols`)."""

    _claims_schema = True
    lease_ttl = 60.0  # lease_rows(): a heartbeat older than this is a dead holder

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        # The core's reads are written with "?" placeholders; psycopg takes "%s".
        return self._exec(sql.replace("?", "%s"), args)

    def _clock(self) -> float:
        # Leases (jobs and named) are the database's clock, never a host's.
        rows = self._exec(f"SELECT {NOW}")
        return rows[0][0] if rows else time.time()

    def _dead_owners(self, now: float) -> list[str]:
        return []  # a holder on another host is never judged by its pid: its lease runs out

    def lease_rows(self, job_ids: Iterable[str]) -> list[LeaseRow]:
        ids = list(dict.fromkeys(job_ids))
        if not self._claims_schema or not ids:
            return []
        out = self._exec(
            "SELECT j.job_id, j.state, j.parked, j.error, j.owner, j.lease_until,"
            " j.attempts, j.lost_leases, j.not_before, j.claimed_at, w.heartbeat_at,"
            f" w.worker_id, w.host, w.pid, {NOW} FROM jobs j LEFT JOIN workers w"
            " ON w.worker_id = j.owner WHERE j.job_id = ANY(%s) ORDER BY j.job_id", (ids,))
        rows, this_host = [], socket.gethostname()
        for r in out:
            heartbeat, registered, host, pid, now = r[10], r[11] is not None, r[12], r[13], r[14]
            alive = (registered and heartbeat is not None and now - heartbeat <= self.lease_ttl
                     and (host != this_host or pid is None or pid_alive(pid)))
            rows.append(LeaseRow(r[0], r[1], bool(r[2]), *r[3:11], alive))
        return rows
