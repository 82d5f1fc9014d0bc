"""Fleet coordination on the ledger: named leases and shared token buckets (schema 3).

* A **named lease** (table ``leases``: name, owner, lease_until) has one holder at a time:
  the dispatcher's leader lease, so that of several ``serve`` replicas one dispatches.
  Taking it is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` (the row is replaced
  only when its lease ran out or its owner renews it) ``RETURNING owner``: a row comes
  back iff the caller holds the lease, and the statement is atomic in both backends
  (SQLite under ``BEGIN IMMEDIATE``; PostgreSQL under the conflict row's lock).
* A **budget** (table ``budgets``: name, tokens, updated, paused_until) is a token bucket
  every process on the ledger takes from: the fleet API budget (:mod:`archiver.budget`).
  :func:`bucket` is the rule; the row is read locked (PostgreSQL ``FOR UPDATE``; SQLite's
  ``BEGIN IMMEDIATE`` holds the write lock already) and written back in one transaction.

"Now" is one clock per backend, as for job leases: the host's for SQLite, the database's
for PostgreSQL. :class:`Coordination` implements the four write methods of
:class:`~archiver.ledger.protocols.RunLedger` once for both backends over four hooks of
theirs: ``_write`` / ``_write_now`` (their write paths), ``_wq`` (one statement of the
open write transaction, written with ``?`` placeholders) and ``_tx_now`` (now, inside
that transaction); ``_lock_row`` is the suffix that locks a row read (PostgreSQL's
``FOR UPDATE``; empty for SQLite).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

TAKE_LEASE = (
    "INSERT INTO leases (name, owner, lease_until) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
    " lease_until = excluded.lease_until"
    " WHERE leases.lease_until IS NULL OR leases.lease_until < ?"
    " OR leases.owner = excluded.owner RETURNING owner")
NEW_BUDGET = ("INSERT INTO budgets (name, tokens, updated, paused_until) VALUES (?, ?, ?, NULL)"
              " ON CONFLICT (name) DO NOTHING")
READ_BUDGET = "SELECT tokens, updated, paused_until FROM budgets WHERE name = ?"


def bucket(tokens: float, updated: float, paused_until: float | None, now: float, *,
           want: int, rate: float, burst: float) -> tuple[float, int, float]:
    """One take from a token bucket: ``(tokens left, granted, wait)``.

    The bucket refills at ``rate`` tokens/s since ``updated`` (a time after ``now`` adds
    nothing: a pause sets it to its end, so the bucket restarts empty, not with a burst),
    up to ``burst``; up to ``want`` whole tokens are granted. ``wait`` is 0 when all were
    granted, else the seconds until the next whole token; while paused nothing is granted
    and ``wait`` is what is left of the pause."""
    if paused_until is not None and paused_until > now:
        return tokens, 0, paused_until - now
    tokens = min(float(burst), tokens + max(0.0, now - updated) * rate)
    granted = max(0, min(int(want), math.floor(tokens)))
    tokens -= granted
    wait = 0.0 if granted >= want else max(0.0, (1.0 - tokens) / rate)
    return tokens, granted, wait


def check_bucket(want: int, rate: float, burst: float) -> None:
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"take_tokens: rate must be a finite number > 0, got {rate!r}")
    if not burst >= 1:
        raise ValueError(f"take_tokens: burst must be at least 1, got {burst!r}")
    if want < 0:
        raise ValueError(f"take_tokens: want must be >= 0, got {want!r}")


class Coordination:
    """Named leases and budgets over the backend's hooks (see the module docstring)."""

    _write: Callable[[Callable[[], Any]], Any]
    _write_now: Callable[[Callable[[], Any], str], Any]
    _lock_row = ""

    def _wq(self, sql: str, args: tuple = ()) -> Any:  # pragma: no cover - backends'
        raise NotImplementedError

    def _tx_now(self) -> float:  # pragma: no cover - backends'
        raise NotImplementedError

    # ------------------------------------------------------------------ named leases
    def take_lease(self, name: str, owner: str, ttl: float) -> bool:
        def work() -> bool:
            now = self._tx_now()
            return self._wq(TAKE_LEASE, (name, owner, now + ttl, now)).fetchone() is not None

        return bool(self._write_now(work, "take_lease"))

    def drop_lease(self, name: str, owner: str) -> None:
        self._write(lambda: self._wq("DELETE FROM leases WHERE name = ? AND owner = ?",
                                     (name, owner)))

    # ------------------------------------------------------------------ budgets
    def take_tokens(self, name: str, want: int, rate: float,
                    burst: float) -> tuple[int, float]:
        check_bucket(want, rate, burst)

        def work() -> tuple[int, float]:
            now = self._tx_now()
            self._wq(NEW_BUDGET, (name, float(burst), now))  # a new bucket starts full
            tokens, updated, paused = self._wq(READ_BUDGET + self._lock_row, (name,)).fetchone()
            left, granted, wait = bucket(tokens, updated, paused, now, want=want, rate=rate,
                                         burst=burst)
            if paused is None or paused <= now:  # while paused the row stays as the pause left it
                self._wq("UPDATE budgets SET tokens = ?, updated = ? WHERE name = ?",
                         (left, max(now, updated), name))
            return granted, wait

        return self._write_now(work, "take_tokens")

    def pause_tokens(self, name: str, seconds: float) -> None:
        def work() -> None:
            now = self._tx_now()
            self._wq(NEW_BUDGET, (name, 0.0, now))
            (paused,) = self._wq("SELECT paused_until FROM budgets WHERE name = ?"
                                 + self._lock_row, (name,)).fetchone()
            until = max(paused or 0.0, now + max(0.0, seconds))
            # emptied, and refilling only from the end of the pause (no burst right after)
            self._wq("UPDATE budgets SET tokens = 0, updated = ?, paused_until = ?"
                     " WHERE name = ?", (until, until, name))

        self._write(work)
