"""Continuous archiving: ``archiver watch`` (poll loop) and ``archiver serve`` (poll loop +
webhook receiver + ``/healthz`` + ``/metrics``). Operations guide: docs/operations.md.

:class:`Service` wires one :class:`~archiver.runtime.Runtime` to a
:class:`~archiver.service.watch.Watcher` running in its own thread and, for ``serve``, an
HTTP server whose webhook deliveries feed the watcher's bounded queue. With ``workers: 1``
the watcher's passes run on this process's threads; with more, the watcher only queues
jobs in the ledger and N worker processes (:class:`~archiver.workers.fleet.WorkerPool`)
claim and archive them.

Shutdown (SIGTERM/SIGINT, or :meth:`Service.shutdown`): the endpoint answers 503 to new
deliveries (the sender retries later), the watcher starts no new pass, the runtime drains
(objects being written finish, nothing new starts); after ``watch.grace_period`` seconds
whatever is still in flight is aborted. A second signal aborts at once. Either way writers
are aborted, never half-committed, so nothing partial is visible in any sink; unfinished
jobs stay ``incomplete`` in the ledger and the next start resumes them.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING

from .watch import Watcher
from .webhooks import JobQueue, SecretStore, WebhookReceiver

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("archiver.service")

__all__ = ["JobQueue", "SecretStore", "Service", "Watcher", "WebhookReceiver"]


class Service:
    """``watch`` (``serve=False``) or ``serve`` in one process, plus ``workers`` worker
    processes when more than 1 (``config_file`` is what they open).

    ``poll_interval`` overrides ``watch.poll_interval`` (tests only: the config refuses
    less than 5 s). The caller owns ``rt`` and closes it after :meth:`close`.
    """

    def __init__(self, rt: Runtime, *, serve: bool = False, poll_interval: float | None = None,
                 workers: int = 1, config_file: str | None = None):
        from ..executors import RunReport, ThreadExecutor, run_pass

        settings = rt.settings
        self.rt = rt
        self.watch_settings, self.serve_settings = settings.watch, settings.serve
        self.serving = serve
        self.ledger = rt.ledger
        self.queue: JobQueue | None = None
        self.metrics = self.receiver = self.server = None
        if serve:
            from .metrics import ServiceMetrics

            s = self.serve_settings
            self.queue = JobQueue(s.queue_size)
            self.metrics = ServiceMetrics(self.ledger,
                                          expiry_warning=settings.watch.expiry_warning,
                                          lease_ttl=float(settings.lease.ttl),
                                          queue=self.queue)
            rt.plugins.pm.register(self.metrics, name=f"archiver-service-metrics-{id(self):x}")
            self.receiver = WebhookReceiver(s, self.queue, on_verdict=self.metrics.verdict)
        self.executor = self.pool = self.dispatcher = None
        if rt.loaded.dispatcher is not None:
            # dispatch.mode names a plugin's dispatcher: this process only lists, triages
            # and queues; remote workers (Celery) claim from the ledger.
            from ..workers.fleet import triage_and_enqueue

            built = rt.loaded.dispatcher
            self.dispatcher = built.cls(built.config)
            if self.metrics is not None:
                self.metrics.add_dispatcher(self.dispatcher)

            def dispatch(jobs) -> RunReport:
                report = RunReport()
                triage_and_enqueue(rt, jobs, report)
                return report
        elif workers > 1:
            if config_file is None:
                raise ValueError("worker processes need the config file they open")
            from ..workers.fleet import WorkerPool, triage_and_enqueue

            self.pool = WorkerPool(rt, config_file, workers, on_outcome=self._outcome)

            def dispatch(jobs) -> RunReport:
                report = RunReport()
                triage_and_enqueue(rt, jobs, report)
                return report
        else:
            base = settings.watch.poll_interval if poll_interval is None else poll_interval
            self.executor = ThreadExecutor(rt, backoff=base)

            def dispatch(jobs) -> RunReport:
                return run_pass(rt, self.executor, jobs=jobs)
        self.watcher = Watcher(rt, settings.watch, dispatch, hints=self.queue,
                               metrics=self.metrics, poll_interval=poll_interval)
        self.done = threading.Event()
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._signals = 0

    def _outcome(self, outcome) -> None:
        """A worker process finished a job: count it as this process's hooks would."""
        if self.metrics is not None:
            self.metrics.worker_outcome(outcome)
        if outcome.state == "incomplete":
            log.warning("job %s is incomplete; retried after its backoff: %s",
                        outcome.job_id, "; ".join(outcome.problems)[:500])
        elif outcome.state == "archived":
            from ..humanize import size
            log.info("job %s archived by a worker: %d objects written, %s received",
                     outcome.job_id, outcome.objects_written, size(outcome.bytes_received),
                     extra={"event": "archived", "job_id": outcome.job_id,
                            "objects": outcome.objects, "bytes": outcome.bytes_received,
                            "sinks": [b.label for b in self.rt.loaded.sinks]})

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Service:
        """Bind the HTTP server (``serve``; OSError if the address is taken), start the loop
        and the workers."""
        if self.serving:
            from .server import ServiceServer

            s = self.serve_settings
            self.server = ServiceServer(
                s.host, s.port, webhook_path=s.path, receiver=self.receiver,
                metrics=self.metrics, health=self.health, max_body_bytes=s.max_body_bytes,
                max_connections=s.max_connections).start()
        if self.executor is not None:
            self.executor.__enter__()
        if self.pool is not None:
            self.pool.start()
        if self.dispatcher is not None:
            self.dispatcher.start(self.rt, self.rt.settings.dispatch)
        self._thread = threading.Thread(target=self._loop, name="archiver-watch", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        try:
            self.watcher.run()
        except Exception:  # the watcher guards its passes; this is a last resort
            log.exception("the watch loop crashed")
            self.watcher.exit_code = self.watcher.exit_code or 1
        finally:
            self.done.set()

    @property
    def url(self) -> str | None:
        return self.server.url if self.server is not None else None

    def shutdown(self) -> None:
        """Graceful stop: no new work; in-flight objects get ``grace_period`` to finish."""
        if self.watcher.stopping.is_set() and self._timer is not None:
            return
        if self.receiver is not None:
            self.receiver.close()
        self.watcher.stop()
        self.rt.request_drain()
        if self.pool is not None:
            self.pool.drain()
        if self.dispatcher is not None:
            self.dispatcher.drain()
        grace = self.watch_settings.grace_period
        self._timer = threading.Timer(grace, self._grace_over)
        self._timer.daemon = True
        self._timer.start()

    def _grace_over(self) -> None:
        if not self.done.is_set():
            log.warning("grace period over: aborting the writes still in flight")
        self.rt.request_stop()
        if self.pool is not None:
            self.pool.abort()

    def abort(self) -> None:
        """Stop now: in-flight writers are aborted (nothing partial is left)."""
        if self.receiver is not None:
            self.receiver.close()
        self.watcher.stop()
        self.rt.request_stop()
        if self.pool is not None:
            self.pool.abort()
        if self.dispatcher is not None:
            self.dispatcher.abort()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the loop has ended."""
        return self.done.wait(timeout)

    def close(self) -> int:
        """Stop everything (aborting if still running); returns the exit code."""
        if self._thread is not None and self._thread.is_alive():
            self.abort()
            self._thread.join()
        if self._timer is not None:
            self._timer.cancel()
        if self.server is not None:
            self.server.stop()
        if self.executor is not None:
            self.executor.__exit__(None, None, None)
        if self.pool is not None:
            self.pool.close(self.watch_settings.grace_period)
        if self.dispatcher is not None:
            self.dispatcher.close(self.watch_settings.grace_period)
        log.info("stopped (exit code %d)", self.watcher.exit_code,
                 extra={"event": "stopped", "exit_code": self.watcher.exit_code})
        return self.watcher.exit_code

    def health(self) -> tuple[bool, dict]:
        w = self.watcher
        alive = self._thread is not None and self._thread.is_alive()
        status = "ok" if alive and not w.stopping.is_set() else (
            "failed" if w.fatal else "stopping")
        data: dict = {"status": status, "polls": w.polls, "poll_failures": w.poll_failures,
                      "last_successful_poll": w.last_poll_ok}
        if w.last_poll_ok is not None:
            data["seconds_since_last_successful_poll"] = round(time.time() - w.last_poll_ok, 3)
        if self.queue is not None:
            data["queue"] = len(self.queue)
            data["queue_size"] = self.queue.maxsize
        if self.dispatcher is not None:
            data["dispatch"] = self.dispatcher.stats()
        if w.fatal:
            data["error"] = w.fatal
        return status == "ok", data

    # ------------------------------------------------------------------ main thread
    def run(self, on_started=None) -> int:
        """Start, wait for the end (signals handled), close; returns the exit code.

        Call from the main thread: the first SIGINT/SIGTERM is a graceful shutdown, the
        second aborts in-flight writes at once.
        """
        def handler(signum, frame):
            self._signals += 1
            if self._signals == 1:
                log.warning("%s: stopping (in-flight writes get %gs; again to abort now)",
                            signal.Signals(signum).name, self.watch_settings.grace_period)
                self.shutdown()
            else:
                log.warning("%s again: aborting in-flight writes now",
                            signal.Signals(signum).name)
                self.abort()

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            if on_started is not None:
                on_started(self)
            while not self.done.wait(0.2):
                pass
        finally:
            code = self.close()
            for s, h in old.items():
                signal.signal(s, h)
        return code
