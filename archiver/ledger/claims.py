"""The claim rules: when a worker may take a job's lease, and when a job is parked.

Pure decisions over a job's lease columns, so every backend takes the same decision
whatever SQL it runs (SQLite reads the row under ``BEGIN IMMEDIATE``; PostgreSQL may fold
the same conditions into one ``UPDATE ... WHERE``). "Now" is one clock per backend: the
host's for SQLite (all processes on one host), the database's for PostgreSQL.

A lease is *free* when nobody holds it or its holder let it run out (``lease_until <
now``): a worker that died or stalled past its TTL. A backend that can tell a holder is
dead before its TTL runs out (SQLite: all processes on one host, and the holder's pid is
gone) says so with ``holder_dead``; that lease is free at once. Taking over such a lease counts a
*lost lease*; a job that loses ``max_lost`` leases is *parked* (state incomplete, an alert
event) instead of being handed to the next worker, because a job that keeps killing its
workers (a crashing plugin, a pathological artifact) would otherwise take the whole fleet
down one worker at a time. ``force`` (``archiver archive JOB``) un-parks it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .states import CLAIMABLE, SETTLED

PARKED_EVENT = "parked"
LEASE_LOST_EVENT = "lease_lost"  # a lease taken over from a holder that died or stalled


def parked_message(lost_leases: int) -> str:
    return (f"parked after {lost_leases} lost leases: each worker holding it died or stalled "
            "(a plugin or artifact may crash the worker); `archiver archive JOB` retries it")


@dataclass(frozen=True)
class LeaseState:
    """A job's row as a claim sees it."""

    state: str
    owner: str | None
    lease_until: float | None
    parked: bool
    lost_leases: int
    not_before: float | None
    holder_dead: bool = False

    def lease_free(self, now: float) -> bool:
        return self.owner is None or self.holder_dead or (self.lease_until or 0.0) < now


@dataclass(frozen=True)
class Decision:
    """``take`` (with the job's new ``lost_leases``), ``park`` or ``refuse`` (``reason``,
    ``holder``: the reasons of :class:`~archiver.ledger.rows.ClaimRefused`)."""

    action: str
    lost_leases: int = 0
    reason: str | None = None
    holder: str | None = None


def decide(row: LeaseState, now: float, *, max_lost: int, force: bool = False,
           ignore_backoff: bool = False) -> Decision:
    """May a worker take this job's lease now?

    In order: a settled job is refused (unless ``force``); a parked job is refused (unless
    ``force``, which un-parks it and resets ``lost_leases``); a live lease is refused, even
    with ``force`` (its holder is working on it); a backoff that has not passed is refused
    (unless ``force`` or ``ignore_backoff``: one pass of ``archiver run`` tries every job
    once, whatever its backoff). Otherwise the lease is taken; if it is taken over from a
    holder whose lease ran out, ``lost_leases`` grows by one, and reaching ``max_lost`` parks the
    job instead.
    """
    if force:
        if not row.lease_free(now):
            return Decision("refuse", reason="held", holder=row.owner)
        return Decision("take", lost_leases=0)
    if row.state in SETTLED:
        return Decision("refuse", reason="settled")
    if row.parked:
        return Decision("refuse", reason="parked")
    if not row.lease_free(now):
        return Decision("refuse", reason="held", holder=row.owner)
    if row.not_before is not None and row.not_before > now and not ignore_backoff:
        return Decision("refuse", reason="backoff")
    lost = row.lost_leases + (1 if row.owner is not None else 0)
    if row.owner is not None and lost >= max_lost:
        return Decision("park", lost_leases=lost)
    return Decision("take", lost_leases=lost)


def claimable(row: LeaseState, now: float) -> bool:
    """Would ``claim_next`` consider this job now?"""
    return (row.state in CLAIMABLE and not row.parked and row.lease_free(now)
            and (row.not_before is None or row.not_before <= now))
