"""Leases on jobs: claim through the ledger, keep with a heartbeat, fence at the end.

One :class:`Heartbeat` per process (its worker id is ``host:pid:hex``). Every
``lease.heartbeat`` seconds it extends the lease of every job this process holds, in one
ledger statement, and learns which jobs it still holds; a job missing from that answer
was taken over by someone else (our lease had expired), so its :class:`JobLease` is marked
lost and the job work aborts its writers. When heartbeats fail for longer than
``lease.self_fence`` (ledger unreachable, or the process was stopped: SIGSTOP, a VM
pause), every lease is marked lost at once, before anything else is written: another
worker may already own those jobs. The final record of a job is written only by
:meth:`JobLease.finish`, which the ledger fences on the owner (``LeaseLost`` otherwise).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import Job

log = logging.getLogger("archiver.leases")


class JobLease:
    """This process's lease on one job."""

    def __init__(self, heartbeat: Heartbeat, job_id: str, attempts: int = 1):
        self.heartbeat, self.job_id, self.attempts = heartbeat, job_id, attempts
        self.lost = threading.Event()
        self.reason = ""

    def mark_lost(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            log.warning("job %s: %s; aborting its writers (another worker finishes it)",
                        self.job_id, reason)
            self.lost.set()

    def finish(self, job: Job, state: str, error: str | None = None, *,
               not_before: float | None = None) -> None:
        """The fenced final record (raises LeaseLost when someone else owns the job)."""
        try:
            self.heartbeat.ledger.finish_job(job, self.heartbeat.worker.id, state, error,
                                             not_before=not_before)
        finally:
            self.heartbeat.untrack(self)


class Heartbeat:
    """Registers this process as a worker and keeps its leases alive (see module doc)."""

    def __init__(self, ledger, worker, settings):
        self.ledger, self.worker = ledger, worker
        self.ttl = float(settings.ttl)
        self.interval = float(settings.heartbeat)
        self.self_fence = float(settings.effective_self_fence)
        self.max_lost = int(settings.max_lost)
        self._leases: dict[str, JobLease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_ok = time.monotonic()
        self.fenced = threading.Event()   # set while heartbeats fail past self_fence

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Heartbeat:
        self.ledger.register_worker(self.worker)
        self.last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="archiver-heartbeat",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop beating and release whatever is still held (nothing is half-recorded:
        unfinished jobs simply become claimable again)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        try:
            self.ledger.unregister_worker(self.worker.id)
        except Exception as exc:  # the leases expire by themselves anyway
            log.warning("could not release this worker's leases: %s", exc)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ leases
    def claim(self, job: Job, *, force: bool = False, ignore_backoff: bool = False) -> Any:
        """A :class:`JobLease`, or the ledger's ``ClaimRefused`` (held, parked, ...)."""
        got = self.ledger.claim(job, self.worker.id, self.ttl, max_lost=self.max_lost,
                                force=force, ignore_backoff=ignore_backoff)
        return self.track(got) if got.ok else got

    def claim_next(self, *, ignore_backoff: bool = False,
                   claimed_before: float | None = None) -> tuple[Any, JobLease] | None:
        """(claim, lease) of the claimable job expiring soonest, or None."""
        got = self.ledger.claim_next(self.worker.id, self.ttl, max_lost=self.max_lost,
                                     ignore_backoff=ignore_backoff,
                                     claimed_before=claimed_before)
        return None if got is None else (got, self.track(got))

    def track(self, claim) -> JobLease:
        lease = JobLease(self, claim.job_id, getattr(claim, "attempts", 1))
        with self._lock:
            self._leases[claim.job_id] = lease
        return lease

    def untrack(self, lease: JobLease) -> None:
        with self._lock:
            if self._leases.get(lease.job_id) is lease:
                del self._leases[lease.job_id]

    def release(self, lease: JobLease) -> None:
        """Give a job back unfinished (draining): claimable again at once."""
        try:
            self.ledger.release(lease.job_id, self.worker.id)
        finally:
            self.untrack(lease)

    @property
    def held(self) -> list[str]:
        with self._lock:
            return list(self._leases)

    # ------------------------------------------------------------------ the beat
    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        # A process that was stopped (SIGSTOP, VM pause) wakes here with the monotonic
        # clock far ahead: its leases may belong to others by now, so stop first.
        if time.monotonic() - self.last_ok > self.self_fence:
            self._lose_all(f"no heartbeat for {time.monotonic() - self.last_ok:.0f}s "
                           f"(more than lease.self_fence {self.self_fence:g}s)")
        # Only leases claimed before this beat's statement can be missing from its
        # answer for a reason: one claimed while it ran is simply not in it yet.
        with self._lock:
            before = list(self._leases.values())
        try:
            still = self.ledger.heartbeat(self.worker.id, self.ttl)
        except Exception as exc:  # the ledger may be back at the next beat
            log.warning("heartbeat failed: %s", exc)
            if time.monotonic() - self.last_ok > self.self_fence:
                self._lose_all(f"heartbeats failing for more than {self.self_fence:g}s")
            return
        self.last_ok = time.monotonic()
        self.fenced.clear()
        for lease in before:
            with self._lock:
                current = self._leases.get(lease.job_id) is lease
            if current and lease.job_id not in still:
                lease.mark_lost("lease lost: another worker took the job over")

    def _lose_all(self, reason: str) -> None:
        self.fenced.set()
        with self._lock:
            leases = list(self._leases.values())
        for lease in leases:
            lease.mark_lost(reason)
