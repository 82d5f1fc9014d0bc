"""Who runs the work: one pass over jobs, and the in-process thread executor.

:func:`run_pass` is what ``archiver run`` / ``archive`` and every watch pass do: read the
jobs, :func:`~archiver.jobwork.settle` each (the one triage), claim the ones to archive
and hand them to an executor. :class:`ThreadExecutor` runs them on this process's threads
(``concurrency`` jobs, ``concurrency`` downloads in flight), holding a lease on each
through one :class:`~archiver.leases.Heartbeat`; worker processes
(:mod:`archiver.workers`) and, later, Celery tasks run the very same
:func:`~archiver.jobwork.archive_job`. Outcomes merge into one :class:`RunReport`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .cancel import Cancelled
from .errors import AuthError, SinkError, SourceError
from .jobwork import (BACKOFF, BUSY, LEASE_LOST, PARKED, SKIPPED, JobOutcome, archive_job,
                      settle)
from .leases import Heartbeat, JobLease
from .ledger import ARCHIVED, INCOMPLETE, LOST, NOTHING, WAITING, new_worker_id
from .model import Job

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("archiver.executors")

# The outcome of a job id named on the command line that the API does not know (404).
UNKNOWN = "unknown"


@dataclass
class RunReport:
    """What one pass did; ``exit_code`` follows docs/cli.md."""

    archived: list[str] = field(default_factory=list)
    incomplete: dict[str, list[str]] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)
    nothing_to_store: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    skipped: int = 0
    busy: dict[str, str] = field(default_factory=dict)      # job -> who holds it
    parked: dict[str, str] = field(default_factory=dict)    # job -> why
    backoff: list[str] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)   # named job the API answers 404
    already: dict[str, int] = field(default_factory=dict)   # skipped: settled state -> jobs
    elapsed: float = 0.0            # seconds, set by whoever ran the pass
    bytes_received: int = 0
    objects_written: int = 0
    fatal: str | None = None
    auth_refused: bool = False      # the API refused the key: retrying cannot help
    interrupted: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, o: JobOutcome) -> None:
        with self._lock:
            self.bytes_received += o.bytes_received
            self.objects_written += o.objects_written
            if o.fatal:
                self.fatal, self.auth_refused = o.fatal, True
            if o.state == ARCHIVED:
                self.archived.append(o.job_id)
            elif o.state == INCOMPLETE:
                self.incomplete[o.job_id] = o.problems or [o.message or "incomplete"]
            elif o.state == LOST:
                self.lost[o.job_id] = o.message or "lost"
            elif o.state == NOTHING:
                self.nothing_to_store.append(o.job_id)
            elif o.state == WAITING:
                self.waiting.append(o.job_id)
            elif o.state == SKIPPED:
                self.skipped += 1
                why = getattr(o, "previous", None) or "settled meanwhile"
                self.already[why] = self.already.get(why, 0) + 1
            elif o.state == UNKNOWN:
                self.unknown[o.job_id] = o.message or "unknown to the API"
            elif o.state in (BUSY, LEASE_LOST):
                self.busy[o.job_id] = o.message or "held by another worker"
            elif o.state == PARKED:
                self.parked[o.job_id] = o.message or "parked"
            elif o.state == BACKOFF:
                self.backoff.append(o.job_id)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        if self.fatal:
            return 3
        if self.lost:
            return 4
        if self.unknown:
            return 5
        return 1 if self.incomplete or self.parked else 0

    def as_dict(self) -> dict[str, Any]:
        return {"archived": self.archived, "incomplete": self.incomplete, "lost": self.lost,
                "nothing_to_store": self.nothing_to_store, "waiting": self.waiting,
                "skipped": self.skipped,
                "skipped_already_archived": self.already.get(ARCHIVED, 0),
                "already_settled": dict(self.already), "unknown": self.unknown,
                "busy": self.busy, "parked": self.parked, "backing_off": self.backoff,
                "bytes_received": self.bytes_received,
                "objects_written": self.objects_written, "fatal": self.fatal,
                "interrupted": self.interrupted, "elapsed_seconds": round(self.elapsed, 3),
                "exit_code": self.exit_code}


def refusal_outcome(job: Job, refused) -> JobOutcome:
    """The outcome of a claim the ledger refused (``ClaimRefused``)."""
    reason = getattr(refused, "reason", "held")
    holder = getattr(refused, "holder", None)
    if reason == "parked":
        return JobOutcome(job.id, PARKED, message=getattr(refused, "message", None)
                          or f"job {job.id} is parked after repeated lost leases; "
                             f"`archiver archive {job.id}` retries it")
    if reason == "backoff":
        return JobOutcome(job.id, BACKOFF, message="backing off after a failed attempt")
    if reason == "settled":
        return JobOutcome(job.id, SKIPPED, message="settled meanwhile by another worker")
    return JobOutcome(job.id, BUSY, message=f"held by {holder or 'another worker'}")


def artifact_pool(rt: Runtime) -> ThreadPoolExecutor:
    """The artifact threads: ``concurrency`` downloading (``Runtime.downloads``), and as
    many finishing objects whose sinks need no memory to commit (local: fsync, link into
    place, fsync the directory), so the next download does not wait for the disk."""
    return ThreadPoolExecutor(2 * rt.settings.concurrency,
                              thread_name_prefix="archiver-artifact")


class ThreadExecutor:
    """Runs claimed jobs on this process's threads. Use as a context manager (it owns
    the heartbeat and the pools); ``backoff`` (the poll interval, watch/serve): incomplete
    jobs wait ``backoff`` × 2^(n-1) before their next attempt; None: the next run
    retries them."""

    def __init__(self, rt: Runtime, *, backoff: float | None = None):
        self.rt, self.backoff = rt, backoff
        if rt.worker is None:
            rt.worker = new_worker_id()
        self.heartbeat = Heartbeat(rt.ledger, rt.worker, rt.settings.lease)
        c = rt.settings.concurrency
        self.jobs = ThreadPoolExecutor(c, thread_name_prefix="archiver-job")
        self.artifacts = artifact_pool(rt)

    def __enter__(self) -> ThreadExecutor:
        self.heartbeat.start()
        return self

    def __exit__(self, *exc) -> None:
        self.jobs.shutdown(wait=True)
        self.artifacts.shutdown(wait=True)
        self.heartbeat.close()

    def submit(self, job: Job, *, explicit: bool = False) -> Future | JobOutcome:
        """Claim ``job`` and start archiving it: a Future of its outcome, or the outcome
        of a refused claim."""
        got = self.heartbeat.claim(job, force=explicit, ignore_backoff=self.backoff is None)
        if not isinstance(got, JobLease):
            return refusal_outcome(job, got)
        return self.jobs.submit(self._work, job, got)

    def _work(self, job: Job, lease: JobLease) -> JobOutcome:
        if self.rt.draining.is_set():  # queued behind others when the stop came
            self.heartbeat.release(lease)
            return JobOutcome(job.id, INCOMPLETE, problems=[f"job {job.id}: not started, "
                                                            "shutting down"])
        return archive_job(self.rt, job, self.artifacts, lease, backoff=self.backoff)


def run_pass(rt: Runtime, executor: ThreadExecutor, *, job_ids: Iterable[str] | None = None,
             jobs: Iterable[Job] | None = None) -> RunReport:
    """One pass. ``job_ids``: archive these (re-read through the API) even if the ledger
    has them settled; ``jobs``: already-read jobs (watch), triaged like a listing;
    neither: every job the source lists."""
    report = RunReport()
    futures: list[Future] = []
    try:
        states = rt.ledger.job_states()
        explicit = job_ids is not None
        if explicit:
            jobs = _named_jobs(rt, job_ids, states, report)
        elif jobs is None:
            jobs = _cut_by_stop(rt, rt.source.iter_jobs())
        for job in jobs:
            if rt.draining.is_set():
                break
            settled = settle(rt, job, states.get(job.id), explicit=explicit)
            if settled is not None:
                report.add(settled)
                continue
            got = executor.submit(job, explicit=explicit)
            if isinstance(got, JobOutcome):
                report.add(got)
            else:
                futures.append(got)
    except AuthError as exc:
        _auth_refused(rt, report, exc)
    except (SourceError, SinkError, Cancelled) as exc:
        if not (rt.stop.is_set() and isinstance(exc, (SourceError, Cancelled))):
            report.fatal = str(exc)  # else our own stop cut the listing: interrupted
    for fut in futures:  # also after a fatal error mid-listing: what started, finishes
        try:
            report.add(fut.result())
        except AuthError as exc:
            _auth_refused(rt, report, exc)
    if rt.draining.is_set() and not report.fatal:
        report.interrupted = True
    return report


def _cut_by_stop(rt: Runtime, jobs: Iterable[Job]) -> Iterator[Job]:
    """``jobs`` (a listing, read page by page) with its requests cut by a stop."""
    with rt.cancel.scope():
        yield from jobs


def _named_jobs(rt: Runtime, job_ids: Iterable[str], states: dict[str, str],
                report: RunReport) -> Iterable[Job]:
    """The jobs named on the command line, re-read through the API. An id the API does
    not know (404) or no longer serves (410, expired) is that job's outcome, not the
    end of the pass; a refused key or an unreachable API still is."""
    for job_id in job_ids:
        try:
            yield rt.source.get_job(job_id)
        except AuthError:
            raise
        except SourceError as exc:
            if exc.status == 404:
                report.add(JobOutcome(job_id, UNKNOWN, message=str(exc)))
            elif exc.status == 410 and states.get(job_id) == ARCHIVED:
                report.add(JobOutcome(job_id, SKIPPED, message="already archived; the API "
                                      "no longer serves it (expired)", previous=ARCHIVED))
            elif exc.status == 410:
                report.add(JobOutcome(job_id, LOST, message=f"job {job_id} expired before it "
                                      f"was archived ({exc})"))
            else:
                raise


def _auth_refused(rt: Runtime, report: RunReport, exc: AuthError) -> None:
    report.fatal, report.auth_refused = str(exc), True
    rt.stop.set()
