"""``archiver worker``: a pull loop that claims jobs from the ledger, soonest expiry first.

A worker holds up to ``concurrency`` jobs at a time (``concurrency`` artifacts in flight
in all), each under a lease kept by the process's heartbeat. It needs nothing but the
config file and the ledger: jobs reach the ledger's queue from ``archiver run --workers``,
``watch``/``serve`` (which list and triage them) or any other process on the same ledger.

Modes: ``drain`` (used by ``run --workers N``) stops when nothing is claimable and retries
nothing claimed since ``since`` (one attempt per job per run, backoff ignored, as ``run``
does); the long-lived mode (``watch``/``serve --workers N``, or ``archiver worker`` under
systemd) keeps polling the queue and honours each job's backoff.

With ``emit``, every outcome and progress event is also handed over as a JSON-able dict
(the supervisor reads them from the worker's stdout, one JSON object per line).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Any, Callable

from ..errors import AuthError
from ..executors import RunReport, ThreadExecutor
from ..jobwork import JobOutcome
from ..model import Job

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("archiver.workers.pull")

IDLE = 1.0  # seconds between looks at an empty queue


def claimed_job(claim) -> Job:
    raw = claim.raw
    if isinstance(raw, str):
        raw = json.loads(raw) if raw else {}
    return Job(claim.job_id, claim.project_id, claim.status, raw or {})


class PullWorker:
    """Claims and archives jobs until drained or stopped; :meth:`run` returns a report."""

    def __init__(self, rt: Runtime, *, drain: bool = False, since: float | None = None,
                 emit: Callable[[dict[str, Any]], None] | None = None,
                 idle: float = IDLE):
        self.rt, self.drain, self.since, self.idle = rt, drain, since, idle
        self.emit = emit or (lambda event: None)
        self.report = RunReport()

    def _claim(self, ex: ThreadExecutor):
        return ex.heartbeat.claim_next(ignore_backoff=self.drain, claimed_before=self.since)

    def run(self) -> RunReport:
        rt, slots = self.rt, self.rt.settings.concurrency
        inflight: set[Future] = set()
        backoff = None if self.drain else float(rt.settings.watch.poll_interval)
        with ThreadExecutor(rt, backoff=backoff) as ex:
            log.info("worker %s: claiming jobs (%s)", rt.worker_id,
                     "until the queue is empty" if self.drain else "until stopped")
            while not rt.draining.is_set() and not self.report.fatal:
                while len(inflight) < slots and not rt.draining.is_set():
                    got = self._claim(ex)
                    if got is None:
                        break
                    claim, lease = got
                    inflight.add(ex.jobs.submit(ex._work, claimed_job(claim), lease))
                if not inflight:
                    if self.drain:
                        break
                    rt.draining.wait(self.idle)
                    continue
                done, inflight = wait(inflight, timeout=self.idle, return_when=FIRST_COMPLETED)
                for fut in done:
                    self._collect(fut)
            for fut in inflight:  # draining or fatal: what started, finishes (or aborts)
                self._collect(fut)
        if rt.draining.is_set() and not self.report.fatal:
            self.report.interrupted = True
        return self.report

    def _collect(self, fut: Future) -> None:
        try:
            outcome = fut.result()
        except AuthError as exc:
            outcome = JobOutcome("", "fatal", fatal=str(exc))
            self.rt.request_stop()
        if outcome.job_id:
            self.report.add(outcome)
        elif outcome.fatal:
            self.report.fatal, self.report.auth_refused = outcome.fatal, True
        self.emit({"type": "outcome", **outcome.as_dict()})
