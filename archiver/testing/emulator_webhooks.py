"""Emulated Plangrep webhooks and job progression over time.

Emulator decisions (the docs are silent; docs/plangrep-api.md, decision 6):

* On every status change (``set_status``, ``expire``, a :class:`Timeline` step) the
  emulator POSTs ``{"type": "job.status_changed", "data": {"job": Job}}`` to the configured
  URL with the Standard Webhooks headers ``webhook-id`` (``msg_…``, the same on every
  retry), ``webhook-timestamp`` (Unix seconds of the attempt) and ``webhook-signature:
  v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}">``.
* **The HMAC key is the UTF-8 bytes of the whole ``wss_…`` secret, prefix included**
  (no base64 decoding, unlike Standard Webhooks' ``whsec_``). Each job has its own secret
  (:func:`job_secret`, what a create-job response would show once); ``secret=`` makes one
  secret sign every job's deliveries instead.
* A non-2xx answer or a connection error is retried (same id, body; new timestamp and
  signature) with exponential backoff, up to ``max_attempts``.
* Knobs (:class:`WebhookSettings`): ``drop`` (probability a delivery is never sent),
  ``duplicate`` (probability it is sent twice), ``forge`` (probability an extra delivery
  with a wrong signature is sent), ``jitter`` (random delay per delivery, so deliveries
  arrive out of order), ``workers`` (concurrent senders); a ``Retry-After`` answer is
  honoured (``honour_retry_after``). Every attempt is recorded in
  :attr:`WebhookSender.log`; every planned delivery (dropped ones too) in ``planned``.
* Expiry through the clock (``expiresAt`` passing) sends nothing; a scheduled
  ``"expired"`` step (or ``expire()``) does.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import itertools
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import requests

if TYPE_CHECKING:  # pragma: no cover
    from .emulator import Emulator

EVENT_TYPE = "job.status_changed"


def job_secret(seed: object, job_id: str) -> str:
    """The ``wss_…`` signing secret of a job (deterministic per emulator seed)."""
    return "wss_" + hashlib.sha256(f"webhook-secret|{seed}|{job_id}".encode()).hexdigest()[:40]


def sign(secret: str, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """``v1,<base64>``: HMAC-SHA256 keyed with the secret's UTF-8 bytes (see module docs)."""
    mac = hmac.new(secret.encode("utf-8"), f"{msg_id}.{timestamp}.".encode() + body,
                   hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signed_headers(secret: str, msg_id: str, body: bytes,
                   timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, msg_id, ts, body),
            "Content-Type": "application/json"}


@dataclass
class WebhookSettings:
    """Where and how webhooks are sent (see the module docstring)."""

    url: str | None = None
    secret: str | None = None        # None: each job's own secret
    drop: float = 0.0
    duplicate: float = 0.0
    forge: float = 0.0
    jitter: float = 0.0
    max_attempts: int = 5
    retry_delay: float = 0.05        # doubles per attempt
    retry_max_delay: float = 1.0
    honour_retry_after: bool = True  # wait at least Retry-After (seconds) after a 429/503
    timeout: float = 5.0
    workers: int = 4
    seed: object = 0


@dataclass(frozen=True)
class Delivery:
    msg_id: str
    job_id: str
    status: str
    kind: str            # "event" | "duplicate" | "forged" | "dropped"
    body: bytes = field(repr=False)
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Attempt:
    """One POST: ``http_status`` None when the connection failed."""

    msg_id: str
    job_id: str
    status: str
    kind: str
    attempt: int
    http_status: int | None
    error: str | None = None


class _Scheduler:
    """Runs callables at monotonic times on ``workers`` daemon threads (started lazily)."""

    def __init__(self, name: str):
        self._name = name
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._closed = False

    def at(self, delay: float, fn: Callable[[], None], workers: int = 1) -> None:
        with self._cond:
            if self._closed:
                return  # shutting down: scheduled work is dropped
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._seq), fn))
            while len(self._threads) < workers:
                t = threading.Thread(target=self._work, daemon=True,
                                     name=f"{self._name}-{len(self._threads)}")
                self._threads.append(t)
                t.start()
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        _, _, fn = heapq.heappop(self._heap)
                        self._busy += 1
                        break
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
            try:
                fn()
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is scheduled or running (False after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._heap or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=5)


class WebhookSender:
    """Sends the emulator's webhooks (configure with :meth:`configure`; off by default)."""

    def __init__(self, emulator: Emulator):
        self._emu = emulator
        self.settings = WebhookSettings()
        self._rng = random.Random("webhooks|0")
        self._ids = itertools.count(1)
        self._sched = _Scheduler("plangrep-emulator-webhooks")
        self._local = threading.local()
        self._lock = threading.Lock()
        self.planned: list[Delivery] = []
        self.log: list[Attempt] = []

    def configure(self, url: str | None, **knobs) -> WebhookSettings:
        """Send to ``url`` (None: stop sending) with the given :class:`WebhookSettings` knobs."""
        with self._lock:
            self.settings = WebhookSettings(url=url, **knobs)
            self._rng = random.Random(f"webhooks|{self.settings.seed}")
        return self.settings

    def notify(self, job: dict) -> None:
        """A job's status changed: plan its deliveries (called by the emulator)."""
        s = self.settings
        if not s.url:
            return
        body = json.dumps({"type": EVENT_TYPE, "data": {"job": job}},
                          ensure_ascii=False).encode("utf-8")
        secret = s.secret or job_secret(self._emu.seed, job["id"])
        with self._lock:
            rng = self._rng
            msg_id = f"msg_{self._emu.seed}_{next(self._ids):08d}"
            dropped, dup, forged = (rng.random() < s.drop, rng.random() < s.duplicate,
                                    rng.random() < s.forge)
            delays = [rng.uniform(0, s.jitter) for _ in range(3)]
            plan = [Delivery(msg_id, job["id"], job["status"],
                             "dropped" if dropped else "event", body, secret)]
            if dup and not dropped:
                plan.append(Delivery(msg_id, job["id"], job["status"], "duplicate", body, secret))
            if forged:
                plan.append(Delivery(f"msg_forged_{next(self._ids):08d}", job["id"],
                                     job["status"], "forged", body,
                                     "wss_forged_" + secret[4:]))
            self.planned.extend(plan)
        for delivery, delay in zip(plan, delays):
            if delivery.kind != "dropped":
                self._schedule(delivery, 1, delay)

    def _schedule(self, delivery: Delivery, attempt: int, delay: float) -> None:
        self._sched.at(delay, lambda: self._send(delivery, attempt), self.settings.workers)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _send(self, d: Delivery, attempt: int) -> None:
        s = self.settings
        if not s.url:
            return
        headers = signed_headers(d.secret, d.msg_id, d.body)
        status = error = None
        retry_after = 0.0
        try:
            resp = self._session().post(s.url, data=d.body, headers=headers, timeout=s.timeout)
            status = resp.status_code
            value = resp.headers.get("Retry-After", "")
            if s.honour_retry_after and value.isdigit():
                retry_after = float(value)
            resp.close()
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        with self._lock:
            self.log.append(Attempt(d.msg_id, d.job_id, d.status, d.kind, attempt, status,
                                    error))
        ok = status is not None and 200 <= status < 300
        if not ok and d.kind != "forged" and attempt < s.max_attempts:
            delay = min(s.retry_max_delay, s.retry_delay * 2 ** (attempt - 1))
            self._schedule(d, attempt + 1, max(delay, retry_after))

    # ------------------------------------------------------------------ for tests
    def attempts(self, kind: str | None = None) -> list[Attempt]:
        with self._lock:
            return [a for a in self.log if kind is None or a.kind == kind]

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """True once every planned delivery (retries included) was sent or given up."""
        return self._sched.wait_idle(timeout)

    def close(self) -> None:
        self._sched.close()


class Timeline:
    """Moves jobs through statuses over (real, fast) time: ``progress(job_id, steps)``."""

    def __init__(self, emulator: Emulator):
        self._emu = emulator
        self._sched = _Scheduler("plangrep-emulator-timeline")
        self.errors: list[str] = []

    def progress(self, job_id: str, steps: list[tuple[float, str]]) -> None:
        """``steps``: ``(seconds from now, status)``; ``"expired"`` expires the job."""
        from .emulator_data import STATUSES

        for _, status in steps:
            if status not in STATUSES:
                raise ValueError(f"unknown status {status!r}; one of {STATUSES}")
        self._emu.job(job_id)  # KeyError now rather than in the timeline thread
        for delay, status in steps:
            self.at(delay, lambda status=status: self._emu.set_status(job_id, status))

    def at(self, delay: float, fn: Callable[[], None]) -> None:
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - e.g. leaving a terminal status
                self.errors.append(f"{type(exc).__name__}: {exc}")
        self._sched.at(delay, run)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        return self._sched.wait_idle(timeout)

    def close(self) -> None:
        self._sched.close()
