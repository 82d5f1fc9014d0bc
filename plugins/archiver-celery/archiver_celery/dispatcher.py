"""``dispatch.mode: celery``: send queued jobs to Celery workers, as job ids.

Run inside ``archiver watch``/``serve``: they list and triage jobs and put those to archive
on the ledger's queue; this dispatcher, once a second (``TICK``):

1. takes or renews the ledger's leader lease (``dispatch.leader_ttl``): of several
   replicas only the holder sends, and a replica that dies hands over within one TTL;
2. forgets the jobs it sent that are no longer claimable (a worker claimed them, they
   settled, were parked or back off after a failure: those come back when claimable);
3. re-sends jobs sent more than ``dispatch.redispatch_after`` ago and still unclaimed, but
   only while the broker holds fewer messages than there are such jobs (the broker lost
   some: a restart without persistence); otherwise the messages are just waiting for a
   free worker and a re-send would only grow the queue;
4. sends new claimable jobs, soonest expiry first, until ``dispatch.max_outstanding`` are
   sent and unclaimed; a job expiring within ``dispatch.urgent_within`` goes out with the
   highest priority, so it overtakes messages already waiting.

What was sent lives only in this process: a new leader starts from the ledger and may send
a job a second time, which costs a worker one ledger read.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from archiver.dispatch import LEADER_LEASE, Dispatcher
from archiver.tracked import process_owner

from .settings import CeleryConfig, safe_broker

if TYPE_CHECKING:
    from archiver.config_settings import DispatchSettings
    from archiver.runtime import Runtime

log = logging.getLogger("archiver.celery.dispatch")

TICK = 1.0


def _expiry(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class CeleryDispatcher(Dispatcher):
    """See the module doc."""

    name = "celery"
    Config = CeleryConfig
    ledger_schemes = ("postgresql",)

    def __init__(self, config: CeleryConfig):
        super().__init__(config)
        self.sent: dict[str, float] = {}       # job id -> time.monotonic() it was sent
        self.leader = False
        self.counts = {"dispatch_sent_total": 0, "dispatch_resent_total": 0,
                       "dispatch_errors_total": 0}
        self.depth: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew_at = 0.0
        self._broker_down = False
        self.owner = f"{process_owner()}:dispatch:{secrets.token_hex(3)}"

    def __repr__(self) -> str:  # never the broker URL's password
        return f"CeleryDispatcher({safe_broker(self.config)}, queue={self.config.queue!r})"

    # ------------------------------------------------------------------ lifecycle
    def start(self, rt: Runtime, settings: DispatchSettings) -> None:
        from .app import make_app

        self.rt, self.settings = rt, settings
        self.app = make_app(self.config)
        self._thread = threading.Thread(target=self._loop, name="archiver-dispatch",
                                        daemon=True)
        self._thread.start()
        log.info("dispatching to Celery workers through %s (queue %s)",
                 safe_broker(self.config), self.config.queue)

    def drain(self) -> None:
        self._stop.set()

    def close(self, grace: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=grace + 5)
        if self.leader:
            try:
                self.rt.ledger.drop_lease(LEADER_LEASE, self.owner)
            except Exception as exc:  # it expires by itself
                log.warning("could not release the dispatcher lease: %s", exc)
            self.leader = False
        app = getattr(self, "app", None)
        if app is not None:
            app.close()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        out["dispatch_leader"] = int(self.leader)
        out["dispatch_outstanding"] = len(self.sent)
        if self.depth is not None:  # as last looked at (when re-sending was considered)
            out["dispatch_broker_depth"] = self.depth
        return out

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # the ledger or broker may be back next tick
                self.counts["dispatch_errors_total"] += 1
                log.warning("dispatch: %s", _describe(exc))
            self._stop.wait(TICK)

    def tick(self) -> None:
        """One round (see the module doc); public for tests."""
        ledger, s = self.rt.ledger, self.settings
        now = time.monotonic()
        if now >= self._renew_at or not self.leader:
            was = self.leader
            self.leader = ledger.take_lease(LEADER_LEASE, self.owner, float(s.leader_ttl))
            self._renew_at = now + float(s.leader_ttl) / 3
            if self.leader != was:
                log.info("dispatcher %s: %s", self.owner,
                         "leading: this replica sends jobs" if self.leader
                         else "another replica leads")
        if not self.leader:
            self.sent.clear()
            return
        self._forget_claimed()
        stale = [j for j, t in self.sent.items() if now - t > float(s.redispatch_after)]
        if stale:  # only then does the broker's count matter (a connection per look)
            self.depth = self._broker_depth()
        if stale and (self.depth is None or self.depth < len(self.sent)):
            log.warning("re-sending %d job(s) unclaimed for more than %gs (the broker "
                        "holds %s message(s) for %d outstanding)", len(stale),
                        float(s.redispatch_after), "?" if self.depth is None else self.depth,
                        len(self.sent))
            self._send([(j, None) for j in stale], resend=True)
        free = int(s.max_outstanding) - len(self.sent)
        if free > 0 and not self._stop.is_set():
            rows = ledger.dispatchable(free + len(self.sent))
            self._send([r for r in rows if r[0] not in self.sent][:free])

    def _forget_claimed(self) -> None:
        if not self.sent:
            return
        now = time.time()
        keep = set()
        for row in self.rt.ledger.lease_rows(list(self.sent)):
            leased = row.owner is not None and (row.lease_until or 0) >= now
            backing_off = row.not_before is not None and row.not_before > now
            if row.state in ("queued", "incomplete") and not row.parked and not leased \
                    and not backing_off:
                keep.add(row.job_id)
        self.sent = {j: t for j, t in self.sent.items() if j in keep}

    def _send(self, rows: list[tuple[str, str | None]], *, resend: bool = False) -> None:
        if not rows:
            return
        try:
            # One producer (and broker connection) for the whole batch, not one taken
            # from the pool and given back for each message.
            with self.app.producer_or_acquire() as producer:
                self._send_rows(rows, producer, resend)
        except Exception as exc:  # no producer to be had: as a refused message
            self._refused(exc)

    def _send_rows(self, rows: list[tuple[str, str | None]], producer: Any,
                   resend: bool) -> None:
        from .app import TASK, priority

        urgent_before = time.time() + float(self.settings.urgent_within)
        for job_id, expires_at in rows:
            if self._stop.is_set():
                return
            exp = _expiry(expires_at)
            urgent = exp is not None and exp <= urgent_before
            try:
                self.app.send_task(TASK, args=[job_id], queue=self.config.queue,
                                   priority=priority(self.config.transport, urgent),
                                   producer=producer,
                                   retry=True, retry_policy={"max_retries": 2,
                                                             "interval_start": 0.2,
                                                             "interval_step": 0.5,
                                                             "interval_max": 1.0})
            except Exception as exc:
                self._refused(exc)
                return
            if self._broker_down:
                log.info("dispatch: the broker %s is back", safe_broker(self.config))
                self._broker_down = False
            if not resend:
                self.counts["dispatch_sent_total"] += 1
            else:
                self.counts["dispatch_resent_total"] += 1
            self.sent[job_id] = time.monotonic()

    def _refused(self, exc: BaseException) -> None:
        self.counts["dispatch_errors_total"] += 1
        if not self._broker_down:
            log.warning("dispatch: the broker %s refused a message: %s; retrying "
                        "every %gs", safe_broker(self.config), _describe(exc), TICK)
        self._broker_down = True

    def _broker_depth(self) -> int | None:
        """Messages waiting in the queue (None when the broker cannot say now)."""
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=self.config.connect_timeout)
                queue = self.app.amqp.queues[self.config.queue]
                _, count, _ = queue(conn.default_channel).queue_declare()
                return int(count)
        except Exception as exc:
            log.debug("broker depth unknown: %s", _describe(exc))
            return None


def _describe(exc: BaseException) -> str:
    """An exception in one line; kombu's messages name hosts, never passwords."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
