"""What the rest of archiver may ask of a ledger, split by who asks.

* :class:`RunLedger`: archiving one job (the pipeline, writers, workers, claims);
* :class:`ComplianceLedger`: bags, fixity audits, ``audit verify``, replication;
* :class:`ReportLedger`: ``status``, metrics, watch mode, ``ledger status``;
* :class:`Ledger`: all three, plus ``close()``: what :func:`~archiver.ledger.open_ledger`
  returns and every backend implements (check one with
  :class:`archiver.testing.ledger_contract.LedgerContract`).

A consumer annotates the narrowest protocol it needs, so a test double (or a read-only
handle) has to provide only that. Rows are the typed dataclasses of
:mod:`archiver.ledger.rows`; report documents (``summary()``, ``job_report()``,
``events()``, ``schema_info()``) are JSON-able dicts, printed as they are by
``archiver status --json`` and ``archiver ledger status --json``.

Every write commits before it returns (unless inside :meth:`RunLedger.batch`), and every
job state, received artifact, stored copy and event is also appended to the hash-chained
audit log in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from ..model import Job, StoredObject
from .rows import (
    AuditRow,
    BagFileRow,
    Claim,
    ClaimRefused,
    CopyRow,
    EventRow,
    JobRow,
    LeaseRow,
    OpenJobRow,
    PendingRow,
    WorkerId,
    WorkerRow,
)


@runtime_checkable
class RunLedger(Protocol):
    """What archiving one job needs."""

    def batch(self) -> AbstractContextManager[None]:
        """A block whose writes commit together.

        The writes *this thread* makes inside the block are collected and committed as one
        transaction when the block ends; if the block raises, none of them is written (and
        the exception propagates). Inside the block writes return None, so methods whose
        result is needed (``add_pending``, ``claim``, ``claim_next``, ``enqueue``,
        ``heartbeat``, ``release``, ``forget_dead_workers``, ``expire_worker``) refuse to
        run there (RuntimeError). Reads inside the block see the ledger as it was before
        the block (the collected writes are not visible yet). A nested ``batch()`` joins the outer
        block: everything commits when the outermost block ends. A fenced write
        (:meth:`finish_job`) inside a block is checked in the committing transaction: if
        it raises :class:`~archiver.errors.LeaseLost`, the whole block is rolled back and
        ``LeaseLost`` is raised where the block ends."""
        ...

    def job_states(self) -> dict[str, str]:
        """``job_id -> state`` of every job in the ledger."""
        ...

    def record_job(self, job: Job, state: str, error: str | None = None) -> None:
        """Insert or update the job's record (project, status, raw, expiry, state, error)
        and append a ``job`` audit record. ``archived_at`` is set the first time the job is
        archived and kept after. Lease columns (owner, lease, attempts, lost leases,
        backoff, parked) are left untouched."""
        ...

    def copies(self, job_id: str) -> dict[tuple[str, str], CopyRow]:
        """The job's stored copies by ``(path, sink)``."""
        ...

    def record_artifact(self, job_id: str, path: str, *, kind: str, key: str | None,
                        filename: str | None, size: int | None, received: dict[str, str],
                        state: str, error: str | None) -> None:
        """One object of a job as received (a ``received`` audit record once stored)."""
        ...

    def record_copy(self, job_id: str, path: str, stored: StoredObject, *,
                    received: dict[str, str], chain: list[dict[str, Any]],
                    verified: bool) -> None:
        """A copy the sink committed (a ``copy`` audit record, plus ``retention`` when the
        sink reported retention facts)."""
        ...

    def add_pending(self, sink: str, token: str, job_id: str | None, path: str | None, *,
                    owner: str | None = None) -> int:
        """Record an open writer's token before its first byte; its id. ``owner``: the
        worker id writing it. Not inside ``batch()``."""
        ...

    def update_pending(self, pending_id: int, token: str) -> None: ...

    def remove_pending(self, pending_id: int) -> None: ...

    def list_pending(self) -> list[PendingRow]:
        """Every open or crashed writer, oldest first, with its owner's host, pid and last
        heartbeat (None when the owner is unknown or gone)."""
        ...

    def event(self, kind: str, message: str = "", *, job_id: str | None = None,
              path: str | None = None, sink: str | None = None,
              data: dict[str, Any] | None = None) -> None:
        """An event, also an audit record with ``data`` (JSON-able facts)."""
        ...

    # -- workers and leases
    def register_worker(self, worker: WorkerId) -> None:
        """Add (or refresh) the worker's row; its heartbeat is now."""
        ...

    def unregister_worker(self, worker_id: str) -> None:
        """A graceful exit: release every lease the worker holds (owner and lease cleared,
        state untouched) and delete its row."""
        ...

    def heartbeat(self, worker_id: str, ttl: float) -> set[str]:
        """In one transaction: the worker's heartbeat is now (its row is added back if a
        cleanup forgot it), and every job it owns gets
        ``lease_until = now + ttl``. Returns the ids of the jobs it still holds: a job taken
        over by another worker (after this one's lease ran out) is missing from the set,
        and its holder must stop working on it."""
        ...

    def forget_dead_workers(self, older_than: float) -> list[str]:
        """Delete the rows of workers whose last heartbeat is more than ``older_than``
        seconds old (cleanup); their ids. Their leases are left to expire, so the next
        claim still counts them as lost."""
        ...

    def expire_worker(self, worker_id: str) -> int:
        """The worker is known to be dead (its supervisor saw it exit): its leases run out
        now (so the next claim counts them as lost) and its row is deleted; how many."""
        ...

    def lease_rows(self, job_ids: Iterable[str]) -> list[LeaseRow]:
        """Lease columns of these jobs and whether each holder is alive (see LeaseRow)."""
        ...

    def claim(self, job: Job, worker_id: str, ttl: float, *, max_lost: int,
              force: bool = False, ignore_backoff: bool = False) -> Claim | ClaimRefused:
        """Take the job's lease for ``ttl`` seconds (push: one message per job).

        In one transaction: the job's row is upserted from ``job`` (project, status, raw,
        expiry; a new row is ``queued``, a ``waiting`` one becomes ``queued``, any other
        state is kept, so a settled job is never downgraded), then the lease is taken iff
        the job is not settled, not parked, its lease is free (no owner, the owner's lease
        ran out, or the backend knows the owner is dead: SQLite, a pid of this host that is
        gone) and its backoff (``not_before``) has passed. ``force`` skips the
        settled, parked and backoff conditions (un-parking the job and resetting its lost
        leases) but never takes a live lease; ``ignore_backoff`` skips only the backoff
        (one pass of ``archiver run`` tries every job once). Taking over a lease that ran out counts a
        lost lease; reaching ``max_lost`` parks the job instead (state incomplete, a
        ``parked`` event) and returns ``ClaimRefused("parked")``. Every successful claim
        counts an attempt. Refusals: ``"settled"``, ``"held"`` (with the holder),
        ``"parked"``, ``"backoff"``. Not inside ``batch()``."""
        ...

    def claim_next(self, worker_id: str, ttl: float, *, max_lost: int,
                   ignore_backoff: bool = False,
                   claimed_before: float | None = None) -> Claim | None:
        """Claim the claimable job (queued or incomplete, not parked, lease free, backoff
        passed unless ``ignore_backoff``, and, with ``claimed_before``, not claimed since
        that time: one attempt per job per pass; an attempt whose holder died or stalled
        never ended, so its lapsed lease is taken over anyway) that expires soonest (no expiry last, then
        by job id), with the lost-lease and parking rules of :meth:`claim`; a job parked
        on the way is skipped and the next one tried. None when there is nothing to claim.
        Not inside ``batch()``."""
        ...

    def enqueue(self, jobs: Iterable[Job]) -> int:
        """Upsert jobs for pull workers: new rows are ``queued``, ``waiting`` ones become
        ``queued``; settled and incomplete rows keep their state (only status, raw and
        expiry are refreshed). Returns how many of them are claimable now."""
        ...

    def finish_job(self, job: Job, worker_id: str, state: str, error: str | None = None, *,
                   not_before: float | None = None) -> None:
        """The fenced end of a claimed job, in one transaction: if ``worker_id`` no longer
        owns the job, nothing is written and :class:`~archiver.errors.LeaseLost` is raised
        (naming the holder). Otherwise the job's record is written exactly as
        :meth:`record_job` writes it (same audit record), and the lease released:
        ``not_before`` is the backoff before the next claim; a settled state (archived,
        nothing to store, lost) also resets the lost leases. Works inside ``batch()``."""
        ...

    def release(self, job_id: str, worker_id: str) -> bool:
        """Drop the lease without changing the job's state (a graceful stop); False when
        ``worker_id`` did not own it."""
        ...

    # -- the queue, for a dispatcher and for workers fed by a broker (schema 3)
    def dispatchable(self, limit: int) -> list[tuple[str, str | None]]:
        """``(job_id, expires_at)`` of the jobs a worker could claim right now, by the rules
        of :meth:`claim_next` (state queued or incomplete, not parked, no live lease,
        backoff passed; SQLite: a holder whose pid is gone on this host holds nothing),
        soonest expiry first (no expiry last, then by job id); at most ``limit``. A read:
        nothing is claimed, so two dispatchers may list the same job (``claim`` decides)."""
        ...

    def queued_job(self, job_id: str) -> Job | None:
        """The job as the ledger holds it (project, status and the raw job object as
        ``enqueue``/``claim``/``record_job`` stored it), for a worker that got only the id
        from a broker; None when the ledger does not know the job."""
        ...

    def queue_stats(self) -> dict[str, Any]:
        """The queue in numbers: ``queued`` (jobs in a claimable state, not parked, not
        under a live lease; in backoff or not), ``leased`` (jobs under a live lease),
        ``parked``, ``oldest_queued_seconds`` (age since ``first_seen`` of the oldest job
        counted in ``queued``, None when there is none) and ``claims_total`` (the sum of
        ``attempts`` over all jobs: every successful claim ever)."""
        ...

    # -- fleet coordination: named leases and shared token buckets (schema 3)
    def take_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the named lease ``name`` for ``ttl`` seconds (the dispatcher's
        leader lease): True when ``owner`` holds it after the call (newly taken, renewed
        by the same owner, or taken over because the previous holder's lease ran out);
        False while another owner holds a live one. Atomic across processes and hosts
        (one statement; "now" is the backend's lease clock: the host's for SQLite, the
        database's for PostgreSQL). Not inside ``batch()``."""
        ...

    def drop_lease(self, name: str, owner: str) -> None:
        """Release the named lease if ``owner`` holds it (a graceful stop); otherwise
        nothing happens."""
        ...

    def lease_holder(self, name: str) -> tuple[str, float] | None:
        """``(owner, seconds left)`` of the named lease while it is live, else None."""
        ...

    def take_tokens(self, name: str, want: int, rate: float,
                    burst: float) -> tuple[int, float]:
        """Take up to ``want`` whole tokens from the token bucket ``name``, shared by every
        process on the ledger (the fleet API budget, :mod:`archiver.budget`). In one
        transaction, the bucket's row locked: it refills at ``rate`` tokens/s (> 0) up to
        ``burst`` (>= 1; a new bucket starts full) and grants what it holds. Returns
        ``(granted, wait)``: ``wait`` is 0 when all ``want`` were granted, else the seconds
        until asking again makes sense; while the bucket is paused (:meth:`pause_tokens`),
        ``granted`` is 0 and ``wait`` the time left of the pause. Not inside ``batch()``."""
        ...

    def pause_tokens(self, name: str, seconds: float) -> None:
        """A fleet-wide pause of bucket ``name`` (a 429 ``Retry-After``): ``paused_until``
        becomes ``max(paused_until, now + seconds)`` and the bucket is emptied; it refills
        from the end of the pause, so nobody bursts right after it."""
        ...


@runtime_checkable
class ComplianceLedger(Protocol):
    """Bags, fixity audits, the audit chain and replication."""

    def audit_rows(self, job_id: str | None = None, after: int = 0) -> Iterator[AuditRow]:
        """Audit records (all, or one job's) after seq ``after``, in seq order."""
        ...

    def record_bag_file(self, job_id: str, sink: str, name: str, key: str, size: int,
                        digests: dict[str, Any]) -> None: ...

    def bag_files(self, job_id: str | None = None,
                  sink: str | None = None) -> list[BagFileRow]: ...

    def copy_rows(self, *, sink: str | None = None, job_id: str | None = None,
                  since: float | None = None) -> list[CopyRow]:
        """Stored copies with ``checked_at`` (last fixity check, None if never) and the
        job's ``project_id``; ``since`` filters on ``stored_at``."""
        ...

    def record_fixity(self, job_id: str, path: str, sink: str, ok: bool, message: str,
                      data: dict[str, Any]) -> None:
        """The outcome of one fixity check: rotation state, a ``fixity`` event and record."""
        ...

    def job_rows(self, job_id: str | None = None) -> list[JobRow]: ...

    def copies(self, job_id: str) -> dict[tuple[str, str], CopyRow]: ...

    def event(self, kind: str, message: str = "", *, job_id: str | None = None,
              path: str | None = None, sink: str | None = None,
              data: dict[str, Any] | None = None) -> None: ...


@runtime_checkable
class ReportLedger(Protocol):
    """Reports: status, metrics, watch mode, ``ledger status``."""

    @property
    def location(self) -> str:
        """Where the ledger is (a path, or a URL without its password)."""
        ...

    def summary(self) -> dict[str, Any]:
        """Report document: ``jobs`` (count per state), ``sinks`` (objects, bytes),
        ``problems`` (incomplete and lost jobs), ``expiry_warnings``, ``pending_writers``."""
        ...

    def job_report(self, job_id: str) -> dict[str, Any]:
        """Report document: the job's ``artifacts`` and ``copies`` (dicts)."""
        ...

    def events(self, job_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Report document: the last ``limit`` events (``EventRow.as_dict()``), oldest
        first."""
        ...

    def event_rows(self, job_id: str | None = None, limit: int = 1000) -> list[EventRow]:
        """The same events, typed."""
        ...

    def open_job_rows(self, states: Iterable[str]) -> list[OpenJobRow]:
        """Every job in ``states`` (watch mode and metrics)."""
        ...

    def count_events(self, kind: str) -> int: ...

    def jobs_with_event(self, kind: str) -> set[str]: ...

    def job_states(self) -> dict[str, str]: ...

    def list_pending(self) -> list[PendingRow]: ...

    def workers(self) -> list[WorkerRow]:
        """Registered workers, their last heartbeat and the jobs they own (``leases``:
        each job with its ``lease_until``)."""
        ...

    def queue_stats(self) -> dict[str, Any]:
        """See :meth:`RunLedger.queue_stats` (metrics read it at every scrape)."""
        ...

    def schema_info(self) -> dict[str, Any]:
        """Report document: ``backend``, ``location`` (never a password), ``version``,
        ``known_version``, ``migrations`` applied (version, name, sha256, applied_at) and
        ``pending`` migration names."""
        ...


@runtime_checkable
class Ledger(RunLedger, ComplianceLedger, ReportLedger, Protocol):
    """A whole ledger: what :func:`~archiver.ledger.open_ledger` returns."""

    def close(self) -> None:
        """Commit what is queued, stop the writer, close the connection(s)."""
        ...
