"""The work for one job: what run, watch, local workers (and later Celery) all execute.

:func:`settle` looks at a job once (via :func:`archiver.triage.decide`) and records the
outcomes that need no work (waiting, nothing to store, lost). :func:`archive_job` archives
a job this process holds a lease on: job.json and result.json first, then every artifact
(concurrently, on the executor's artifact pool), the BagIt tag files last, and finally
the job's state, written only if the lease is still ours (fenced in the ledger).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .cancel import Cancelled
from .errors import ArchiverError, AuthError, LeaseLost, SourceError
from .fanout import Item, store_item
from .humanize import duration, parse_iso
from .humanize import size as _size
from .jobrecords import JobRecords
from .ledger import ARCHIVED, INCOMPLETE, LOST, NOTHING, WAITING
from .model import ArtifactResult, Job
from .triage import ARCHIVE, LOSE, NOTHING_TO_STORE, SKIP, WAIT, decide

if TYPE_CHECKING:
    from .leases import JobLease
    from .runtime import Runtime

log = logging.getLogger("archiver.jobwork")

# Outcomes that are not job states: the job was left alone in this pass.
SKIPPED, BUSY, PARKED, BACKOFF, LEASE_LOST, INTERRUPTED = (
    "skipped", "busy", "parked", "backoff", "lease_lost", "interrupted")


@dataclass
class JobOutcome:
    """What happened to one job in one pass (JSON-able: workers send it to their parent)."""

    job_id: str
    state: str                       # a job state, or one of the outcomes above
    problems: list[str] = field(default_factory=list)
    message: str | None = None
    bytes_received: int = 0
    objects_written: int = 0
    objects: int = 0
    fatal: str | None = None         # the API refused the key: the pass must stop
    expires_at: str | None = None
    written: dict[str, list[int]] = field(default_factory=dict)  # sink -> [objects, bytes]
    failures: dict[str, int] = field(default_factory=dict)       # sink or "*" -> objects
    previous: str | None = None      # skipped: the state the ledger already had

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobOutcome:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def settle(rt: Runtime, job: Job, previous: str | None, *, explicit: bool = False,
           records: JobRecords | None = None) -> JobOutcome | None:
    """Record what needs no work; None when the job is to be archived. ``records``:
    where the ``discovered`` event is queued (committed with the pass's others, before
    the jobs are queued); None: it is committed now."""
    d = decide(job, previous, explicit=explicit)
    if d.action == SKIP:
        return JobOutcome(job.id, SKIPPED, message=d.reason, previous=previous)
    if d.action == WAIT:
        if previous != WAITING:
            rt.ledger.record_job(job, WAITING)
        return JobOutcome(job.id, WAITING, message=d.reason, expires_at=job.expires_at)
    if d.action == LOSE:
        return lose(rt, job, f"job {job.id} {d.reason}")
    if d.action == NOTHING_TO_STORE:
        rt.ledger.record_job(job, NOTHING)
        rt.hook_job_done(job, NOTHING, [])
        return JobOutcome(job.id, NOTHING, message=d.reason)
    assert d.action == ARCHIVE
    if previous is None and not _discovered(rt, job.id):  # audit trail: once per job
        def record() -> None:
            rt.ledger.event("discovered", f"{job.status} job to archive", job_id=job.id,
                            data={"project_id": job.project_id, "status": job.status,
                                  "expires_at": job.expires_at})
        if records is None:
            record()
        else:
            records.add(record)
    return None


def _discovered(rt: Runtime, job_id: str) -> bool:
    """Was the job's ``discovered`` event recorded already? A job can be triaged again
    with no ledger row (a pass killed before the job was claimed or queued, a fleet's
    parent killed mid-listing): the event is still recorded once, by whichever run or
    process saw the job first (its row may not exist yet: only the events say so)."""
    return any(e.kind == "discovered" for e in rt.ledger.event_rows(job_id, limit=10_000))


def warn_expiring(rt: Runtime, now: float | None = None) -> list[str]:
    """What ``watch`` does for open jobs, for one-pass commands: a warning line (on
    stderr, through logging) for every open job (waiting, incomplete) whose ``expiresAt``
    is within ``watch.expiry_warning``, and one ``expiry_warning`` event per job (none
    when watch already recorded it), with the ``archiver_job_expiring`` hook. Returns
    the messages."""
    window = float(rt.settings.watch.expiry_warning)
    if window <= 0:
        return []
    now = time.time() if now is None else now
    warned, out = None, []
    for row in rt.ledger.open_job_rows((INCOMPLETE, WAITING)):
        expires = parse_iso(row.expires_at)
        if expires is None or not 0 < expires - now <= window:
            continue
        msg = (f"job {row.job_id} ({row.state}) expires in {duration(expires - now)} and is "
               "not archived yet")
        log.warning("EXPIRY WARNING: %s", msg)
        out.append(msg)
        warned = rt.ledger.jobs_with_event("expiry_warning") if warned is None else warned
        if row.job_id not in warned:
            rt.ledger.event("expiry_warning", msg, job_id=row.job_id)
            warned.add(row.job_id)
            try:  # once per job and ledger, like the event (notifications, pagers)
                rt.plugins.hook.archiver_job_expiring(
                    job=Job(row.job_id, row.project_id, row.status, row.raw), state=row.state,
                    expires_in=expires - now, message=msg)
            except Exception:
                log.exception("an archiver_job_expiring hook failed")
    return out


def lose(rt: Runtime, job: Job, message: str, lease: JobLease | None = None) -> JobOutcome:
    log.error("LOST: %s", message)
    with rt.ledger.batch():
        if lease is not None:
            lease.finish(job, LOST, message)
        else:
            rt.ledger.record_job(job, LOST, message)
        rt.ledger.event("lost", message, job_id=job.id)
    rt.hook_job_done(job, LOST, [])
    return JobOutcome(job.id, LOST, message=message)


def backoff_delay(rt: Runtime, base: float, attempts: int) -> float:
    """Persisted backoff after an incomplete attempt: base × 2^(n-1), at most
    ``watch.retry_max_delay`` (base: the poll interval)."""
    return min(rt.settings.watch.retry_max_delay, base * 2 ** max(0, attempts - 1))


def archive_job(rt: Runtime, job: Job, pool: Executor, lease: JobLease, *,
                backoff: float | None = None) -> JobOutcome:
    """Archive a job this process holds ``lease`` on. ``backoff`` (seconds, the poll
    interval): an incomplete job is not claimable again before ``backoff`` × 2^(n-1)
    (watch, serve, workers); None: ``run``, which the next run retries. Raises AuthError
    (the key was refused); everything else is the outcome."""
    out = JobOutcome(job.id, INCOMPLETE, expires_at=job.expires_at)
    try:
        # Every request of the job (its result, not only the objects' transfers, which
        # open scopes of their own) is cut by a stop, however stalled its connection.
        with rt.cancel.scope():
            _archive(rt, job, pool, lease, out, backoff)
    except AuthError:
        rt.stop.set()
        raise
    except LeaseLost as exc:
        out.state, out.message = LEASE_LOST, str(exc)
        log.warning("job %s: %s; its final state is left to the new owner", job.id, exc)
    except Exception as exc:  # one job's failure must not end the pass
        if isinstance(exc, Cancelled) or (rt.stop.is_set() and isinstance(exc, SourceError)):
            # our own stop cut the job's requests: an interruption, not a failure
            log.warning("job %s: stopped: %s", job.id, exc)
            msg = f"stopped, nothing partial kept ({exc})"
        else:
            log.exception("job %s failed", job.id)
            msg = exc if isinstance(exc, ArchiverError) else f"internal error: {exc!r}"
        out.state, out.problems = INCOMPLETE, [f"job {job.id}: {msg}"]
        try:
            lease.finish(job, INCOMPLETE, out.problems[0], not_before=_nb(rt, lease, backoff))
        except LeaseLost as lost:
            out.state, out.message = LEASE_LOST, str(lost)
    return out


def _nb(rt: Runtime, lease: JobLease, backoff: float | None) -> float | None:
    # A job cut short by a shutdown did not fail: the next start takes it at once.
    if backoff is None or rt.draining.is_set():
        return None
    return time.time() + backoff_delay(rt, backoff, lease.attempts)


def _archive(rt: Runtime, job: Job, pool: Executor, lease: JobLease, out: JobOutcome,
             backoff: float | None) -> None:
    rt.on_progress("job", {"job": job.id})
    try:
        result = rt.source.read_result(job)
    except SourceError as exc:
        if exc.status == 410:
            lost = lose(rt, job, f"job {job.id}: result expired before it was archived ({exc})",
                        lease)
            out.state, out.message = lost.state, lost.message
            return
        raise
    items = rt.items(job, result)
    done = rt.ledger.copies(job.id)
    # The objects' ledger records are committed in groups (jobrecords), all of them
    # before the tag files read the copies back and before the job's final state.
    records = JobRecords(rt.ledger)
    ctx = rt.store_context(stopped=lease.lost.is_set, records=records)
    try:
        results: list[ArtifactResult] = [_item(rt, ctx, job, it, done, out)
                                         for it in items[:2]]
        futures = [pool.submit(_item, rt, ctx, job, it, done, out) for it in items[2:]]
        results += records.gather(futures)
    finally:
        records.flush()
    problems = [f"{r.path}: {'; '.join(r.errors.values())}" for r in results if r.errors]
    if lease.lost.is_set():
        problems.append(f"job {job.id}: {lease.reason}")
    if not problems and rt.settings.bagit.enabled:
        # BagIt tag files last, once every object is stored and verified in every sink.
        from .compliance.bagit import write_bags
        problems = write_bags(rt, job, results)
    out.objects = len(results)
    if problems:
        out.state, out.problems = INCOMPLETE, problems
        lease.finish(job, INCOMPLETE, "; ".join(problems)[:4000],
                     not_before=_nb(rt, lease, backoff))
        rt.hook_job_done(job, INCOMPLETE, results)
        return
    with rt.ledger.batch():  # the fenced state and its event commit together
        lease.finish(job, ARCHIVED)
        rt.ledger.event("archived", f"{len(results)} objects in {len(rt.sinks)} sinks",
                        job_id=job.id)
    out.state = ARCHIVED
    log.info("job %s archived: %d objects, %s received, sinks %s", job.id, len(results),
             _size(out.bytes_received), ", ".join(rt.sinks),
             extra={"event": "archived", "job_id": job.id, "objects": len(results),
                    "bytes": out.bytes_received, "sinks": list(rt.sinks)})
    rt.hook_job_done(job, ARCHIVED, results)


def _item(rt: Runtime, ctx, job: Job, item: Item, done: dict, out: JobOutcome
          ) -> ArtifactResult:
    res = store_item(ctx, job, item, done)
    written = sum(1 for c in res.copies.values() if not c.existed)
    # The job's artifacts finish on many threads: += is not atomic, so the counters are
    # summed under the runtime's lock.
    with rt.counters_lock:
        out.bytes_received += res.size if not res.skipped else 0
        out.objects_written += written
        for sink, copy in res.copies.items():
            if not copy.existed:
                tally = out.written.setdefault(sink, [0, 0])
                tally[0] += 1
                tally[1] += copy.size
        for where in res.errors:
            out.failures[where] = out.failures.get(where, 0) + 1
    try:
        rt.plugins.hook.archiver_artifact_done(job=job, artifact=item.artifact, result=res)
    except Exception:
        log.exception("an archiver_artifact_done hook failed")
    rt.on_progress("artifact", {"job": job.id, "path": item.path, "ok": res.ok,
                                "size": res.size, "skipped": res.skipped})
    return res


__all__ = ["JobOutcome", "archive_job", "settle", "lose", "SKIPPED", "BUSY", "PARKED",
           "BACKOFF", "LEASE_LOST", "INTERRUPTED", "LOST", "NOTHING"]
