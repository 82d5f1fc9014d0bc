"""Runs with worker processes: ``run --workers N`` and ``watch``/``serve --workers N``.

:func:`run_with_workers` is one pass: this process lists and triages the jobs (the same
:func:`~archiver.jobwork.settle` as every pass), puts those to archive on the ledger's
queue and lets N drain-mode workers claim them; outcomes come back over the workers'
stdout and merge into one :class:`~archiver.executors.RunReport`. Work held by a worker
that died is taken over by another (its leases are expired by the supervisor), so a
pass ends only when every queued job has an outcome, is parked, or is held by a live
process outside this run (``busy``).

:class:`WorkerPool` keeps N long-lived workers for ``watch``/``serve``: the watch loop
only enqueues; the workers claim, archive and back off by themselves.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from ..cancel import Cancelled
from ..errors import AuthError, SinkError, SourceError
from ..executors import RunReport
from ..jobrecords import JobRecords
from ..jobwork import PARKED, SKIPPED, JobOutcome, settle
from ..ledger import CLAIMABLE, SETTLED
from ..ledger.groupcommit import GROUP_MAX
from ..recovery import recover_dead_writers
from .forkserver import ForkServer
from .supervisor import Child, Supervisor, respawn_delay

if TYPE_CHECKING:
    from ..model import Job
    from ..runtime import Runtime

log = logging.getLogger("archiver.workers")

FINAL = frozenset({"archived", "incomplete", "lost", "nothing_to_store", PARKED, SKIPPED,
                   "busy"})


def triage_and_enqueue(rt: Runtime, jobs, report: RunReport, *,
                       on_work: Callable[[], None] | None = None) -> list[str]:
    """Settle every job; enqueue the ones to archive; their ids. ``on_work`` is called
    once, at the first job that needs work (while the rest is still being listed)."""
    states = rt.ledger.job_states()
    todo: list[Job] = []
    # The new jobs' "discovered" events are committed in groups (a transaction each was
    # most of a dispatcher's ledger writes), all before the jobs are queued.
    discovered, seen = JobRecords(rt.ledger, most=GROUP_MAX), set()
    try:
        for job in jobs:
            if rt.draining.is_set():
                break
            if job.id in seen:  # listed twice (pages shifted): settled once
                continue
            seen.add(job.id)
            settled = settle(rt, job, states.get(job.id), records=discovered)
            if settled is not None:
                report.add(settled)
            else:
                if not todo and on_work is not None:
                    on_work()
                todo.append(job)
    finally:
        discovered.flush()
    # Already on the queue (queued, or incomplete and waiting for its retry): a watch
    # pass over a large backlog must not rewrite every row of it on every poll.
    fresh = [j for j in todo if states.get(j.id) not in CLAIMABLE]
    if fresh:
        rt.ledger.enqueue(fresh)
    return [j.id for j in todo]


class _Events:
    """Merges the workers' events into one report and one progress display."""

    def __init__(self, rt: Runtime, report: RunReport):
        self.rt, self.report = rt, report
        self.final: dict[str, str] = {}
        self.fatal = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], child: Child) -> None:
        kind = event.get("type")
        if kind == "progress":
            self.rt.on_progress(str(event.get("kind")), event.get("data") or {})
        elif kind == "outcome":
            outcome = JobOutcome.from_dict(event)
            if outcome.fatal:
                self.report.fatal, self.report.auth_refused = outcome.fatal, True
                self.fatal.set()
            if outcome.job_id:
                with self._lock:
                    self.final[outcome.job_id] = outcome.state
                self.report.add(outcome)


def _expire(rt: Runtime, child: Child) -> None:
    """A child died: its leases are worthless now (same host, pid gone)."""
    if child.worker_id:
        try:
            rt.ledger.expire_worker(child.worker_id)
        except Exception as exc:  # the leases then expire by their ttl
            log.warning("could not expire the leases of dead worker %s: %s",
                        child.worker_id, exc)
    try:
        recover_dead_writers(rt)
    except Exception as exc:
        log.warning("recovering the dead worker's writers failed: %s", exc)


def run_with_workers(rt: Runtime, config_file: str, n: int, *,
                     verbosity: int = 0) -> RunReport:
    """One pass with ``n`` worker processes (see module doc). A stop requested on ``rt``
    (the caller's signal handler) is forwarded to the workers."""
    report = RunReport()
    since = time.time()
    # The fork server's imports (~0.6 s) overlap the rest of the listing: it is launched
    # at the first job to archive, so that a pass with nothing to do never pays for it.
    forks = ForkServer() if ForkServer.enabled() else None
    try:
        with rt.cancel.scope():  # a stop cuts a stalled listing too
            queued = triage_and_enqueue(rt, rt.source.iter_jobs(), report,
                                        on_work=forks.launch if forks else None)
    except AuthError as exc:
        report.fatal, report.auth_refused = str(exc), True
        queued = []
    except (SourceError, SinkError, Cancelled) as exc:
        if rt.stop.is_set() and isinstance(exc, (SourceError, Cancelled)):
            report.interrupted = True  # our own stop cut the listing
        else:
            report.fatal = str(exc)
        queued = []
    if not queued:
        if forks is not None:
            forks.close()
        return report
    events = _Events(rt, report)
    sup = Supervisor(config_file, n, events, on_death=lambda c, rc: _expire(rt, c),
                     worker_args=["--drain", "--since", repr(since)], verbosity=verbosity,
                     progress=rt.shows_progress, fork_server=forks)
    try:
        _drive(rt, sup, events, queued, n, report)
    finally:
        sup.stop(now=True)
        sup.wait_all(10)
        sup.close()
    if rt.draining.is_set() and not report.fatal:
        report.interrupted = True
    return report


def _drive(rt: Runtime, sup: Supervisor, events: _Events, queued: list[str], n: int,
           report: RunReport) -> None:
    sup.start(min(n, len(queued)))
    rounds = 0
    limit = rt.settings.lease.max_lost * len(queued) + 4 * n + 10  # bounded, whatever dies
    while True:
        ended = sup.reap()
        if rt.draining.is_set() or events.fatal.is_set():
            if not sup.stopping:
                sup.stop(now=rt.stop.is_set())
            sup.kill_overdue(rt.settings.watch.grace_period)
            if not sup.alive:
                return
            time.sleep(0.05)
            continue
        if any(rc != 0 for _, rc in ended) and _remaining(events, queued):
            rounds += 1
            if rounds > limit:
                log.error("workers keep dying; giving up this pass")
                break
            if sup.alive < n:
                sup.spawn(_free(sup, n))
        if sup.alive:
            time.sleep(0.05)
            continue
        left = _remaining(events, queued)
        if not left:
            return
        wait = _leftovers(rt, left, events, report)
        if wait is None:
            return
        rounds += 1
        if rounds > limit:
            break
        if rt.draining.wait(max(0.0, wait)):
            continue
        sup.start(min(n, len(left)))
    for job_id in _remaining(events, queued):
        report.add(JobOutcome(job_id, "incomplete", problems=[
            f"job {job_id}: not archived in this pass: the workers kept dying"]))


def _free(sup: Supervisor, n: int) -> int:
    used = set(sup.children)
    return next(i for i in range(n + len(used) + 1) if i not in used)


def _remaining(events: _Events, queued: list[str]) -> list[str]:
    return [j for j in queued if events.final.get(j) not in FINAL]


def _leftovers(rt: Runtime, left: list[str], events: _Events,
               report: RunReport) -> float | None:
    """Sort the jobs no worker finished: settled meanwhile, parked, held by a live
    process outside this pass (busy), or held by a dead lease (seconds to wait for it,
    the smallest). None: nothing left to wait for."""
    now, wait = time.time(), None
    for row in rt.ledger.lease_rows(left):
        if row.state in SETTLED:
            outcome = JobOutcome(row.job_id, SKIPPED, message=f"{row.state} by another worker")
        elif row.parked:
            outcome = JobOutcome(row.job_id, PARKED, message=row.error)
        elif row.owner and row.lease_until and row.lease_until > now:
            if row.owner_alive:
                outcome = JobOutcome(row.job_id, "busy", message=f"held by {row.owner}")
            else:
                w = row.lease_until - now + 0.1
                wait = w if wait is None else min(wait, w)
                continue
        else:
            wait = 0.0 if wait is None else min(wait, 0.0)
            continue
        events.final[row.job_id] = outcome.state
        report.add(outcome)
    return wait


class WorkerPool:
    """N long-lived workers beside a watch loop (``watch``/``serve --workers N``)."""

    def __init__(self, rt: Runtime, config_file: str, n: int, *, verbosity: int = 0,
                 on_outcome: Callable[[JobOutcome], None] | None = None):
        self.rt = rt
        self.on_outcome = on_outcome or (lambda o: None)
        # progress=False: the pool shows no progress (only outcomes count, see _event)
        self.sup = Supervisor(config_file, n, self._event, on_death=self._death,
                              verbosity=verbosity, progress=False)
        self.n = n
        self._deaths_in_a_row = 0
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    def _event(self, event: dict[str, Any], child: Child) -> None:
        if event.get("type") == "outcome" and event.get("job_id"):
            self._deaths_in_a_row = 0
            self.on_outcome(JobOutcome.from_dict(event))

    def _death(self, child: Child, rc: int) -> None:
        self._deaths_in_a_row += 1
        _expire(self.rt, child)

    def start(self) -> WorkerPool:
        self.sup.start()
        self._thread = threading.Thread(target=self._watch, name="archiver-worker-pool",
                                        daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self.sup.stopping:
            self.sup.reap()
            if self.sup.alive < self.n and not self.sup.stopping:
                if self.rt.draining.wait(respawn_delay(self._deaths_in_a_row)):
                    break
                self.sup.spawn(_free(self.sup, self.n))
            time.sleep(0.1)
        self._done.set()

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in list(self.sup.children.values())]

    def drain(self) -> None:
        self.sup.stop()

    def abort(self) -> None:
        self.sup.stop(now=True)

    def close(self, grace: float) -> None:
        if not self.sup.stopping:  # a second stop() would be the children's abort signal
            self.sup.stop()
        while self.sup.alive and not self.sup.overdue(grace):
            self.sup.reap()
            time.sleep(0.05)
        self.sup.kill_overdue(grace)
        self.sup.signal_all(signal.SIGKILL)
        self.sup.wait_all(5)
        self.sup.close()
