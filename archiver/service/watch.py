"""The watch loop: poll the API, archive finished jobs soonest-expiring first, never give up.

One thread runs every pass (polls and webhook hints alike); a pass hands the jobs that
need work to the service's dispatch (this process's threads, or the ledger's queue for
local worker processes), and the ledger's leases make sure that one worker at a time
works on a job, whoever else shares the ledger.

* **Poll** (every ``poll_interval``): list the jobs of the configured projects, drop those
  the ledger has settled (archived, nothing to store, lost) and incomplete ones still in
  their backoff, sort by ``expiresAt`` and hand them to ``Pipeline.run(jobs=...)``.
  Non-terminal jobs are recorded as ``waiting`` and looked at again by the next poll.
* **Hints** (webhooks): each queued job id is re-read through the API (``GET /jobs/{id}``);
  an id the API does not know (404) is ignored with a logged reason.
* **Outages**: a poll that fails (API unreachable after the source's own retries, 5xx) is
  logged and counted, and the next poll tries again. A refused API key (401/403) is fatal:
  the loop stops with exit code 3.
* **Incomplete jobs** are retried with exponential backoff: ``poll_interval`` × 2^(n-1),
  at most ``retry_max_delay``. The backoff is persisted in the ledger (the job's
  ``not_before``), so it survives restarts and every worker honours it.
* **Expiry**: a job that expired before it was archived becomes ``lost`` (a loud error, a
  ledger event, a metric). Open jobs (waiting, incomplete) whose ``expiresAt`` is within
  ``expiry_warning`` get one ``expiry_warning`` event, a warning log line and a metric.
  An open job past its ``expiresAt`` that no longer appears in the listing is re-read:
  410/404 means lost.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..cancel import Cancelled
from ..errors import ArchiverError, AuthError, SourceError
from ..ledger import INCOMPLETE, SETTLED, WAITING
from ..model import Job

if TYPE_CHECKING:
    from ..config import WatchSettings
    from ..executors import RunReport
    from ..runtime import Runtime
    from .webhooks import JobQueue

log = logging.getLogger("archiver.service.watch")

EXIT_FATAL = 3


def parse_time(value: Any) -> float | None:
    """Unix seconds of an ISO 8601 timestamp (``...Z`` included); None when unusable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return dt.timestamp()


def human(seconds: float) -> str:
    """``42s``, ``17m``, ``5.5h``, ``2.3d``."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def expiry_order(job: Job) -> tuple[float, str]:
    expires = parse_time(job.expires_at)
    return (expires if expires is not None else float("inf"), job.id)


@dataclass
class OpenJob:
    """A job the ledger has not settled: waiting (not finished) or incomplete."""

    job_id: str
    project_id: str
    status: str
    state: str
    expires_at: float | None
    completed_at: float | None
    first_seen: float
    raw: dict

    def job(self) -> Job:
        return Job(self.job_id, self.project_id, self.status, self.raw)


def open_jobs(ledger, states: Iterable[str] = (INCOMPLETE, WAITING)) -> list[OpenJob]:
    """The ledger's open jobs, with their expiry and completion times parsed."""
    out = []
    for row in ledger.open_job_rows(states):  # OpenJobRow (raw decoded; a str is read too)
        data = row.raw
        if isinstance(data, str):
            try:
                data = json.loads(data) if data else {}
            except ValueError:
                data = {}
        data = data if isinstance(data, dict) else {}
        out.append(OpenJob(row.job_id, row.project_id, row.status, row.state,
                           parse_time(row.expires_at), parse_time(data.get("completedAt")),
                           row.first_seen, data))
    return out


def warned_jobs(ledger) -> set[str]:
    return ledger.jobs_with_event("expiry_warning")


class NullMetrics:
    """What the loop reports when nobody collects metrics (``archiver watch``)."""

    def poll(self, ok: bool) -> None: ...
    def job_retry(self) -> None: ...
    def expiry_warning(self) -> None: ...
    def hint_ignored(self, reason: str) -> None: ...


class Watcher:
    """Runs passes until :meth:`stop`; see the module docstring.

    ``poll_interval`` overrides ``settings.poll_interval`` (tests use fractions of a
    second; the config refuses less than 5 s). ``hints`` is the webhook queue, if any.
    """

    def __init__(self, rt: Runtime, settings: WatchSettings, dispatch, *,
                 hints: JobQueue | None = None, metrics=None,
                 poll_interval: float | None = None):
        self.rt = rt
        self.dispatch = dispatch    # jobs -> RunReport: archive them, or queue them
        self.ledger = rt.ledger
        self.source = rt.source
        self.interval = settings.poll_interval if poll_interval is None else poll_interval
        self.expiry_warning = settings.expiry_warning
        self.retry_max = settings.retry_max_delay
        self.hints = hints
        self.metrics = metrics or NullMetrics()
        self.stopping = threading.Event()
        self.exit_code = 0
        self.fatal: str | None = None
        self.last_poll_ok: float | None = None   # time.time() of the last successful poll
        self.polls = 0
        self.poll_failures = 0
        self._warned = warned_jobs(self.ledger)

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        """Preflight the sinks once, then poll and serve hints until stopped."""
        try:
            from ..recovery import recover_dead_writers
            self.rt.preflight()
            recover_dead_writers(self.rt)
        except (ArchiverError, OSError) as exc:  # a sink we cannot write to: stop here
            return self._fail(f"preflight failed: {exc}")
        next_poll = time.monotonic()
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= next_poll:
                self._guard(self.poll_once)
                next_poll = time.monotonic() + self.interval
                continue
            if self.hints is None:
                self.stopping.wait(next_poll - now)
                continue
            ids = self.hints.take(timeout=next_poll - now)
            if ids and not self.stopping.is_set():
                self._guard(self.handle_hints, ids)
        return self.exit_code

    def stop(self) -> None:
        """Stop taking work (the current pass is drained by the caller's runtime)."""
        self.stopping.set()
        if self.hints is not None:
            self.hints.close()

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except AuthError as exc:
            self._fail(str(exc))
        except Cancelled:  # our own stop cut the pass's requests: nothing to report
            log.info("watch pass cut short by the stop")
        except Exception:  # a bug in one pass must not end the service
            log.exception("watch pass failed; trying again at the next poll")

    def _fail(self, message: str) -> int:
        log.error("fatal: %s", message)
        self.fatal, self.exit_code = message, EXIT_FATAL
        self.stop()
        return EXIT_FATAL

    # ------------------------------------------------------------------ passes
    def poll_once(self) -> RunReport | None:
        """One poll: list, pick, archive, then look at expiry."""
        try:
            with self.rt.cancel.scope():  # a stop cuts a stalled listing too
                listed = list(self.source.iter_jobs())
        except AuthError:
            raise
        except SourceError as exc:
            self.poll_failures += 1
            self.metrics.poll(False)
            log.warning("poll failed (%s); retrying in %s", exc, human(self.interval))
            return None
        states = self.ledger.job_states()
        work = [j for j in listed if self._wanted(j, states.get(j.id))]
        seen = {j.id for j in listed}
        projects = {j.project_id for j in listed} | set(self._configured_projects() or ())
        work += self._vanished(seen, projects)
        report = self._pass(work, states)
        self.polls += 1
        self.metrics.poll(True)
        self.last_poll_ok = time.time()
        log.info("poll %d: %d job(s) listed, %d to look at", self.polls, len(listed),
                 len(work), extra={"event": "poll", "listed": len(listed),
                                   "to_archive": len(work)})
        self._warn_expiring()
        return report

    def handle_hints(self, job_ids: list[str]) -> RunReport | None:
        """Re-read the hinted jobs through the API and archive the finished ones."""
        states = self.ledger.job_states()
        todo = [j for j in dict.fromkeys(job_ids) if states.get(j) not in SETTLED]
        if not todo:
            return None
        with ThreadPoolExecutor(min(8, len(todo)), thread_name_prefix="archiver-hint") as ex:
            jobs = [j for j in ex.map(self._read_hint, todo) if j is not None]
        configured = self._configured_projects()
        keep = []
        for job in jobs:
            if configured is not None and job.project_id not in configured:
                log.warning("webhook for job %s ignored: project %s is not configured",
                            job.id, job.project_id)
                self.metrics.hint_ignored("other_project")
            elif self._wanted(job, states.get(job.id)):
                keep.append(job)
        return self._pass(keep, states)

    def _read_hint(self, job_id: str) -> Job | None:
        try:
            return self.source.get_job(job_id)
        except AuthError:
            raise
        except SourceError as exc:
            if exc.status == 404:
                log.warning("webhook for job %r ignored: the API does not know this job (%s)",
                            job_id, exc)
                self.metrics.hint_ignored("unknown_job")
            elif exc.status == 410:
                log.warning("webhook for job %s: the job has expired; the next poll "
                            "records it", job_id)
                self.metrics.hint_ignored("expired")
            else:
                log.warning("webhook for job %s: re-reading it failed (%s); the next poll "
                            "picks it up", job_id, exc)
                self.metrics.hint_ignored("api_error")
            return None

    def _configured_projects(self) -> set[str] | None:
        projects = getattr(self.source.config, "projects", None)
        return set(projects) if projects is not None else None

    def _wanted(self, job: Job, state: str | None) -> bool:
        # incomplete jobs in their backoff are refused by the claim (persisted not_before)
        return state not in SETTLED

    def _vanished(self, listed: set[str], projects: set[str]) -> list[Job]:
        """Open jobs past their expiry that the listing no longer shows: re-read them;
        gone (404/410) means lost, which the triage records from an ``expired`` job."""
        now = time.time()
        out = []
        for oj in open_jobs(self.ledger):
            if oj.job_id in listed or oj.project_id not in projects:
                continue
            if oj.expires_at is None or oj.expires_at > now:
                continue
            try:
                out.append(self.source.get_job(oj.job_id))
            except AuthError:
                raise
            except SourceError as exc:
                if exc.status in (404, 410):
                    out.append(Job(oj.job_id, oj.project_id, "expired",
                                   {**oj.raw, "status": "expired"}))
        return out

    def _pass(self, jobs: list[Job], states: dict[str, str]) -> RunReport | None:
        if not jobs or self.stopping.is_set():
            return None
        jobs = sorted(jobs, key=expiry_order)
        for job in jobs:
            if states.get(job.id) == INCOMPLETE and job.has_result:
                self.metrics.job_retry()
        report = self.dispatch(jobs)
        if report.auth_refused and not self.stopping.is_set():
            # only a refused API key stops the service by itself
            self._fail(report.fatal)
            return report
        self.log_report(report)
        return report

    def log_report(self, report: RunReport) -> None:
        """One line per job archived, incomplete or lost (workers' outcomes too)."""
        if self.stopping.is_set():
            return
        for job_id, problems in report.incomplete.items():
            log.warning("job %s is incomplete; retried after its backoff: %s", job_id,
                        "; ".join(problems)[:500])

    def _warn_expiring(self) -> None:
        if self.expiry_warning <= 0:
            return
        now = time.time()
        for oj in open_jobs(self.ledger):
            if oj.job_id in self._warned or oj.expires_at is None:
                continue
            left = oj.expires_at - now
            if 0 < left <= self.expiry_warning:
                msg = (f"job {oj.job_id} ({oj.state}) expires in {human(left)} and is not "
                       f"archived yet")
                log.warning("EXPIRY WARNING: %s", msg)
                self.ledger.event("expiry_warning", msg, job_id=oj.job_id)
                self.metrics.expiry_warning()
                self._warned.add(oj.job_id)
                try:  # as for one-pass commands (jobwork.warn_expiring): once per job
                    self.rt.plugins.hook.archiver_job_expiring(
                        job=oj.job, state=oj.state, expires_in=left, message=msg)
                except Exception:
                    log.exception("an archiver_job_expiring hook failed")
