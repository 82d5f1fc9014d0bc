"""Prometheus metrics of ``archiver serve`` (``/metrics``); reference in docs/operations.md.

Two kinds:

* **Ledger gauges**, computed from the ledger at every scrape, so they survive restarts and
  always match ``archiver status``: jobs per state, objects and bytes per sink, pending
  writers, artifact download retries, the oldest unarchived finished job (its age and the
  time left before it expires), how many open jobs are inside ``expiry_warning``, and the
  claim queue (``queue_stats()``: depth, lag, leased jobs, claims so far).
* **Process counters**, driven by the ``archiver_artifact_done`` / ``archiver_job_done``
  hooks (a plugin object registered on the pipeline's plugin manager), the watch loop and
  the webhook receiver: what this process did since it started.

``prometheus_client`` is imported lazily; every instance has its own registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..hookspecs import hookimpl
from ..ledger import ARCHIVED, INCOMPLETE, LOST, NOTHING, QUEUED, WAITING
from .watch import open_jobs

if TYPE_CHECKING:
    from .webhooks import JobQueue, Verdict

STATES = (ARCHIVED, INCOMPLETE, NOTHING, LOST, WAITING)  # what a processed job ends as
GAUGE_STATES = (*STATES, QUEUED)  # archiver_jobs: queued for pull workers, too
UNARCHIVED = (INCOMPLETE, QUEUED)  # finished at the source, not archived yet
REJECT_REASONS = ("missing_headers", "bad_timestamp", "stale_timestamp", "future_timestamp",
                  "bad_signature", "no_secret", "malformed_json", "bad_payload", "too_large",
                  "no_length", "duplicate", "queue_full", "shutting_down")


def _prometheus():
    try:
        import prometheus_client
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("archiver serve needs prometheus_client for /metrics: "
                          "pip install prometheus-client") from None
    return prometheus_client


class _LedgerCollector:
    """Gauges read from the ledger at scrape time."""

    def __init__(self, ledger, expiry_warning: float, clock: Callable[[], float],
                 lease_ttl: float = 60.0):
        self.ledger, self.expiry_warning, self.clock = ledger, expiry_warning, clock
        self.lease_ttl = lease_ttl

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        summary = self.ledger.summary()
        jobs = GaugeMetricFamily("archiver_jobs", "Jobs in the ledger by state.",
                                 labels=["state"])
        for state in sorted(set(GAUGE_STATES) | set(summary["jobs"])):
            jobs.add_metric([state], summary["jobs"].get(state, 0))
        yield jobs
        objects = GaugeMetricFamily("archiver_stored_objects",
                                    "Objects stored per sink (ledger).", labels=["sink"])
        size = GaugeMetricFamily("archiver_stored_bytes", "Bytes stored per sink (ledger).",
                                 labels=["sink"])
        for sink, s in sorted(summary["sinks"].items()):
            objects.add_metric([sink], s["objects"])
            size.add_metric([sink], s["bytes"])
        yield objects
        yield size
        yield GaugeMetricFamily("archiver_pending_writers",
                                "Writers in flight or left by a crash.",
                                value=summary["pending_writers"])
        retries = self.ledger.count_events("retry")
        yield CounterMetricFamily("archiver_artifact_retries",
                                  "Whole-artifact restarts after a failed download (ledger).",
                                  value=retries)
        yield CounterMetricFamily("archiver_lost_leases",
                                  "Job leases taken over from a worker that died or stalled "
                                  "(ledger; the events name the jobs).",
                                  value=self.ledger.count_events("lease_lost"))
        yield CounterMetricFamily("archiver_parked_jobs",
                                  "Jobs parked after lease.max_lost lost leases (ledger; "
                                  "`archiver archive JOB` retries one).",
                                  value=self.ledger.count_events("parked"))
        now_ = self.clock()
        live = GaugeMetricFamily("archiver_workers", "Workers registered in the ledger, by "
                                 "whether their heartbeat is recent (within lease.ttl).",
                                 labels=["heartbeat"])
        workers = self.ledger.workers()
        fresh = sum(1 for w in workers
                    if w.heartbeat_at and now_ - w.heartbeat_at <= self.lease_ttl)
        live.add_metric(["recent"], fresh)
        live.add_metric(["stale"], len(workers) - fresh)
        yield live
        queue = self.ledger.queue_stats()
        yield GaugeMetricFamily("archiver_queue_depth", "Jobs waiting for a worker: queued or "
                                "incomplete, not parked, under no live lease (ledger).",
                                value=queue["queued"])
        yield GaugeMetricFamily("archiver_queue_lag_seconds", "How long the oldest job waiting "
                                "for a worker has been known (since first seen); 0 when none.",
                                value=queue["oldest_queued_seconds"] or 0.0)
        yield GaugeMetricFamily("archiver_leased_jobs", "Jobs a worker holds a live lease on "
                                "(ledger).", value=queue["leased"])
        # A gauge named like a counter: it is the ledger's sum of attempts, which never
        # goes down, but it is read, not counted, by this process (like the ledger gauges).
        yield GaugeMetricFamily("archiver_claims_total", "Successful job claims ever, by every "
                                "worker (sum of attempts in the ledger).",
                                value=queue["claims_total"])
        now = self.clock()
        opened = open_jobs(self.ledger, (INCOMPLETE, WAITING, QUEUED))
        unarchived = [o for o in opened if o.state in UNARCHIVED]
        age = GaugeMetricFamily("archiver_oldest_unarchived_job_age_seconds",
                                "Age (since it finished) of the oldest finished job not yet "
                                "archived; 0 when there is none.")
        left = GaugeMetricFamily("archiver_oldest_unarchived_job_expires_in_seconds",
                                 "Seconds before the oldest finished, unarchived job expires "
                                 "(absent when there is none).")
        if unarchived:
            oldest = min(unarchived, key=lambda o: (o.completed_at or o.first_seen, o.job_id))
            age.add_metric([], max(0.0, now - (oldest.completed_at or oldest.first_seen)))
            if oldest.expires_at is not None:
                left.add_metric([], oldest.expires_at - now)
        else:
            age.add_metric([], 0.0)
        yield age
        yield left
        soon = sum(1 for o in opened if o.expires_at is not None
                   and 0 < o.expires_at - now <= self.expiry_warning)
        yield GaugeMetricFamily("archiver_jobs_expiring_soon",
                                "Open jobs (waiting, queued or incomplete) expiring within "
                                "watch.expiry_warning.", value=soon)


class _DispatchCollector:
    """A dispatcher's numbers: ``x_total`` as counters, the rest as gauges."""

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        mode = getattr(self.dispatcher, "name", "?")
        try:
            stats = self.dispatcher.stats()
        except Exception:  # a scrape must not fail because a plugin did
            return
        for key, value in sorted(stats.items()):
            if not isinstance(value, (int, float)) or not key.replace("_", "").isalnum():
                continue
            name, doc = f"archiver_{key}", f"Dispatcher ({mode}): {key.replace('_', ' ')}."
            if key.endswith("_total"):
                fam = CounterMetricFamily(name.removesuffix("_total"), doc)
            else:
                fam = GaugeMetricFamily(name, doc)
            fam.add_metric([], float(value))
            yield fam


class ServiceMetrics:
    """Every metric of one service; ``render()`` gives the exposition text.

    Register ``self`` on the pipeline's plugin manager to count stored objects and
    finished jobs (``archiver_artifact_done`` / ``archiver_job_done``).
    """

    def __init__(self, ledger, *, expiry_warning: float = 86400.0, lease_ttl: float = 60.0,
                 queue: JobQueue | None = None, clock: Callable[[], float] = time.time):
        prom = _prometheus()
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.objects = prom.Counter("archiver_objects_written",
                                    "Objects this process stored, per sink.", ["sink"],
                                    registry=r)
        self.bytes = prom.Counter("archiver_bytes_written",
                                  "Bytes this process stored, per sink.", ["sink"], registry=r)
        self.failures = prom.Counter("archiver_object_failures",
                                     "Objects that failed, per sink ('*': the download).",
                                     ["sink"], registry=r)
        self.jobs = prom.Counter("archiver_jobs_processed",
                                 "Jobs this process finished processing, by final state.",
                                 ["state"], registry=r)
        self.retries = prom.Counter("archiver_job_retries",
                                    "Re-attempts of incomplete jobs by the watch loop.",
                                    registry=r)
        self.polls = prom.Counter("archiver_polls", "Polls of the API, by result.",
                                  ["result"], registry=r)
        self.last_poll = prom.Gauge("archiver_last_successful_poll_timestamp_seconds",
                                    "When the last poll succeeded (Unix time).", registry=r)
        self.warnings = prom.Counter("archiver_expiry_warnings",
                                     "Expiry warnings raised (job close to expiry, not "
                                     "archived).", registry=r)
        self.accepted = prom.Counter("archiver_webhook_deliveries_accepted",
                                     "Verified webhook deliveries queued for a re-read.",
                                     registry=r)
        self.rejected = prom.Counter("archiver_webhook_deliveries_rejected",
                                     "Webhook deliveries refused or ignored, by reason.",
                                     ["reason"], registry=r)
        self.ignored = prom.Counter("archiver_webhook_jobs_ignored",
                                    "Verified deliveries whose job was not archived, by reason "
                                    "(unknown_job: the API answered 404).", ["reason"],
                                    registry=r)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for state in STATES:
            self.jobs.labels(state)
        for reason in ("unknown_job", "other_project", "expired", "api_error"):
            self.ignored.labels(reason)
        self.polls.labels("ok")
        self.polls.labels("failed")
        if queue is not None:
            length = prom.Gauge("archiver_webhook_queue_length",
                                "Job ids waiting for a re-read.", registry=r)
            length.set_function(lambda: len(queue))
            cap = prom.Gauge("archiver_webhook_queue_capacity", "serve.queue_size.",
                             registry=r)
            cap.set(queue.maxsize)
        r.register(_LedgerCollector(ledger, expiry_warning, clock, lease_ttl))

    def add_dispatcher(self, dispatcher) -> None:
        """Expose a dispatcher's ``stats()`` (:mod:`archiver.dispatch`) at scrape time."""
        self.registry.register(_DispatchCollector(dispatcher))

    # ------------------------------------------------------------------ hooks
    @hookimpl
    def archiver_artifact_done(self, job, artifact, result) -> None:
        if result.skipped:
            return
        for sink, copy in result.copies.items():
            if not copy.existed:
                self.objects.labels(sink).inc()
                self.bytes.labels(sink).inc(copy.size)
        for where in result.errors:
            self.failures.labels(where).inc()

    @hookimpl
    def archiver_job_done(self, job, state, results) -> None:
        self.jobs.labels(state).inc()

    def worker_outcome(self, outcome) -> None:
        """A job finished by a worker process (``workers: N``): counted as if this process
        had run it, so the counters cover every worker of the service."""
        for sink, (objects, size) in outcome.written.items():
            self.objects.labels(sink).inc(objects)
            self.bytes.labels(sink).inc(size)
        for where, n in outcome.failures.items():
            self.failures.labels(where).inc(n)
        if outcome.state in STATES:
            self.jobs.labels(outcome.state).inc()

    # ------------------------------------------------------------------ the loop, receiver
    def poll(self, ok: bool) -> None:
        self.polls.labels("ok" if ok else "failed").inc()
        if ok:
            self.last_poll.set_to_current_time()

    def job_retry(self) -> None:
        self.retries.inc()

    def expiry_warning(self) -> None:
        self.warnings.inc()

    def hint_ignored(self, reason: str) -> None:
        self.ignored.labels(reason).inc()

    def verdict(self, verdict: Verdict) -> None:
        if verdict.outcome == "accepted":
            self.accepted.inc()
        else:
            self.rejected.labels(verdict.reason or "other").inc()

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    # ------------------------------------------------------------------ exposition
    def render(self) -> tuple[bytes, str]:
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
