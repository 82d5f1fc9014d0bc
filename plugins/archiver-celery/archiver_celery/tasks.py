"""The task ``archiver.archive_job(job_id)`` and the per-process state of a worker.

A task claims its job through the ledger and runs the same job work
(:func:`archiver.jobwork.archive_job`) as every other executor. A message for a job that
is settled, leased by someone else, parked or backing off does nothing and is
acknowledged: duplicates (a redelivery after ``visibility_timeout``, a dispatcher's
re-send, a duplicated publish) cost one ledger read.

Each worker process opens its own runtime (ledger connections, HTTP pools, sink clients)
on its first task, after the fork, and keeps it: :func:`state` notices a fork by the pid.
The worker's main process checks the sinks (preflight) and removes what dead writers left
before the pool starts (``worker_init``) and opens nothing that its children inherit.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    from archiver.runtime import Runtime

log = logging.getLogger("archiver.celery.tasks")


class WorkerState:
    """One worker process's runtime, heartbeat (its leases) and artifact threads."""

    def __init__(self, config_file: str):
        from archiver.executors import artifact_pool
        from archiver.leases import Heartbeat
        from archiver.ledger import new_worker_id
        from archiver.runtime import Runtime

        self.pid = os.getpid()
        self.rt: Runtime = Runtime.open(config_file)
        self.rt.worker = new_worker_id()
        self.heartbeat = Heartbeat(self.rt.ledger, self.rt.worker,
                                   self.rt.settings.lease).start()
        self.pool = artifact_pool(self.rt)
        # A new process often replaces one that died (the pool restarts killed
        # children): what the dead one was writing is removed before anything else.
        try:
            from archiver.recovery import recover_dead_writers
            recover_dead_writers(self.rt)
        except Exception as exc:  # the next start, `watch` or `cleanup` tries again
            log.warning("recovering dead writers failed: %s", exc)
        log.info("worker %s ready", self.rt.worker.id)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.heartbeat.close()
        self.rt.close()


_lock = threading.Lock()
_state: WorkerState | None = None


def state(config_file: str) -> WorkerState:
    """This process's state, made on first use (and again in a forked child)."""
    global _state
    with _lock:
        if _state is None or _state.pid != os.getpid():
            # An inherited state belongs to the parent: never use (or close) its
            # connections here.
            _state = WorkerState(config_file)
        return _state


def close_state() -> None:
    global _state
    with _lock:
        st, _state = _state, None
    if st is not None and st.pid == os.getpid():
        st.close()


def run_job(config_file: str, job_id: str) -> str:
    """Claim and archive ``job_id``; the outcome's state (or why nothing was done)."""
    from archiver.errors import AuthError
    from archiver.executors import refusal_outcome
    from archiver.jobwork import archive_job
    from archiver.leases import JobLease

    st = state(config_file)
    rt = st.rt
    job = rt.ledger.queued_job(job_id)
    if job is None:
        log.warning("job %s: not in the ledger; message ignored", job_id)
        return "unknown"
    got = st.heartbeat.claim(job)
    if not isinstance(got, JobLease):
        outcome = refusal_outcome(job, got)
        log.info("job %s: %s; message ignored", job_id, outcome.message or outcome.state)
        return outcome.state
    backoff = float(rt.settings.watch.poll_interval)
    try:
        outcome = archive_job(rt, job, st.pool, got, backoff=backoff)
    except AuthError as exc:
        # The key was refused: give the job back untouched, for when the key is fixed.
        # One task at a time per process, so the stop the job work set is ours to reset.
        st.heartbeat.release(got)
        rt.stop.clear()
        log.error("job %s: %s", job_id, exc)
        return "auth_refused"
    _log_outcome(outcome)
    return outcome.state


def _log_outcome(outcome) -> None:
    extra = {"event": outcome.state, "job_id": outcome.job_id}
    if outcome.state == "archived":
        return  # the job work logged it
    if outcome.state == "incomplete":
        log.warning("job %s is incomplete; retried after its backoff: %s", outcome.job_id,
                    "; ".join(outcome.problems)[:500], extra=extra)
    else:
        log.info("job %s: %s %s", outcome.job_id, outcome.state, outcome.message or "",
                 extra=extra)


def prepare_host(config_file: str) -> None:
    """The worker's main process, before its pool starts: preflight and recovery, with a
    runtime closed again before anything forks."""
    from archiver.recovery import recover_dead_writers
    from archiver.runtime import Runtime

    rt = Runtime.open(config_file)
    try:
        rt.preflight()
        recover_dead_writers(rt)
    finally:
        rt.close()


def register(app: Celery, config_file: str | None) -> None:
    """Attach the task (and, for workers, the process signals) to ``app``."""
    from .app import TASK

    @app.task(name=TASK, bind=True, acks_late=True, ignore_result=True,
              reject_on_worker_lost=True)
    def archive_job(self, job_id: Any) -> str:
        if config_file is None:
            raise RuntimeError("this archiver Celery app only sends tasks")
        return run_job(config_file, str(job_id))

    if config_file is None:
        return
    from celery import signals

    @signals.worker_init.connect(weak=False)
    def _init(sender=None, **kw) -> None:
        prepare_host(config_file)

    @signals.worker_process_shutdown.connect(weak=False)
    def _child_done(**kw) -> None:
        close_state()

    @signals.worker_shutdown.connect(weak=False)
    def _done(**kw) -> None:  # the solo and threads pools run tasks in this process
        close_state()
