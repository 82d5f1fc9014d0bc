"""Delivery: one bounded in-memory queue per endpoint, drained by a daemon thread.

The archiving thread only appends to a deque under a lock (microseconds, never blocks):
when the queue is full the *oldest* message is dropped and counted, because the newest
outcome of a job is the one worth knowing. The drain thread POSTs with a per-request
timeout and retries (tenacity: exponential backoff, capped) on a timeout, a refused
connection, 408, 429 and 5xx; another 4xx is given up at once (retrying cannot fix it).
Error messages name the endpoint by ``name (scheme://host:port)`` and describe the
failure in our own words: ``requests``' exception texts quote the URL, which for Slack
and Teams holds the token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import requests
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity import wait_exponential
from tenacity.retry import retry_base

from . import messages
from .config import Endpoint

log = logging.getLogger("archiver.notify")

_RETRY_STATUS = frozenset({408, 425, 429})
_DROP_LOG_EVERY = 100  # the first drop and every 100th are logged, not each one


class Retryable(Exception):
    """A failed attempt worth retrying; ``str()`` is safe to log."""


class Refused(Exception):
    """A failed attempt not worth retrying (a 4xx); ``str()`` is safe to log."""


@dataclass
class Message:
    event: str
    job_id: str
    body: bytes
    msg_id: str


class EndpointQueue:
    """The queue and drain thread of one endpoint (see module doc)."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.label = endpoint.label
        self._queue: deque[Message] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()   # set: abandon retries and exit
        self._thread: threading.Thread | None = None
        self._busy = False               # a message is being sent
        self._session: requests.Session | None = None
        self.sent = self.failed = self.dropped = 0

    def __repr__(self) -> str:  # the URL may hold a token: never shown
        return f"EndpointQueue({self.label}, queued={len(self._queue)})"

    # ------------------------------------------------------------------ producer side
    def put(self, msg: Message) -> None:
        """Queue ``msg``; never blocks on the network (the thread starts on first use)."""
        with self._cond:
            if self._stop.is_set():
                return
            if len(self._queue) >= self.endpoint.queue_size:
                old = self._queue.popleft()
                self.dropped += 1
                if self.dropped % _DROP_LOG_EVERY == 1:
                    log.warning("notify endpoint %s: queue full (%d): dropped the oldest "
                                "message (%s of job %s); %d dropped so far", self.label,
                                self.endpoint.queue_size, old.event, old.job_id, self.dropped)
            self._queue.append(msg)
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, daemon=True,
                                                name=f"archiver-notify-{self.endpoint.name}")
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def flush(self, deadline: float) -> int:
        """Wait until everything queued was delivered or given up, at most until
        ``deadline`` (``time.monotonic()``), then stop; returns what was left undone."""
        with self._cond:
            while (self._queue or self._busy) and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.05))
            left_over = len(self._queue) + (1 if self._busy else 0)
            self._stop.set()
            self._cond.notify_all()
        return left_over

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's thread and sockets are not ours."""
        self._queue.clear()
        self._cond = threading.Condition()
        self._thread, self._busy, self._session = None, False, None

    # ------------------------------------------------------------------ drain thread
    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                msg = self._queue.popleft()
                self._busy = True
            try:
                self._deliver(msg)
            except Exception:  # noqa: BLE001 - the drain thread must outlive any bug
                log.exception("notify endpoint %s: delivering %s of job %s failed",
                              self.label, msg.event, msg.job_id)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, msg: Message) -> None:
        ep = self.endpoint
        retrying = Retrying(
            stop=stop_after_attempt(ep.attempts),
            wait=wait_exponential(multiplier=ep.backoff, max=ep.max_backoff),
            retry=retry_if_exception_type(Retryable) & _not_stopped(self._stop),
            sleep=self._sleep, reraise=False,
            before_sleep=lambda rs: log.warning(
                "notify endpoint %s: %s of job %s: attempt %d failed (%s); retrying",
                self.label, msg.event, msg.job_id, rs.attempt_number,
                rs.outcome.exception() if rs.outcome else "?"))
        try:
            retrying(self._post, msg)
        except RetryError as exc:
            self.failed += 1
            last = exc.last_attempt.exception()
            log.error("notify endpoint %s: gave up on %s of job %s after %d attempt(s): %s",
                      self.label, msg.event, msg.job_id, exc.last_attempt.attempt_number, last)
        except (Retryable, Refused) as exc:  # not retried: a 4xx, or stopping
            self.failed += 1
            log.error("notify endpoint %s: gave up on %s of job %s: %s", self.label,
                      msg.event, msg.job_id, exc)
        else:
            self.sent += 1
            log.debug("notify endpoint %s: %s of job %s delivered", self.label, msg.event,
                      msg.job_id)

    def _sleep(self, seconds: float) -> None:
        # Backoff waits end early when the process flushes for exit and time is up.
        self._stop.wait(seconds)

    def _post(self, msg: Message) -> None:
        ep = self.endpoint
        if self._session is None:
            self._session = requests.Session()
            self._session.trust_env = False  # no ~/.netrc credentials sent to a webhook
        try:
            resp = self._session.post(
                ep.url.get_secret_value(), data=msg.body, allow_redirects=False,
                headers=messages.headers(ep.format, ep.key, msg.msg_id, msg.body),
                timeout=ep.timeout)
        except requests.Timeout:
            raise Retryable(f"timed out after {ep.timeout:g} s") from None
        except requests.ConnectionError as exc:
            raise Retryable(_why_unreachable(exc)) from None
        except requests.RequestException as exc:
            raise Retryable(f"request failed ({type(exc).__name__})") from None
        with resp:
            if 200 <= resp.status_code < 300:
                return
            what = f"HTTP {resp.status_code} {resp.reason or ''}".strip()
            if resp.status_code >= 500 or resp.status_code in _RETRY_STATUS:
                raise Retryable(what)
            raise Refused(what)


def _not_stopped(stop: threading.Event) -> retry_base:
    """Retry only while the process is not past its exit flush."""

    class _NotStopped(retry_base):
        def __call__(self, retry_state) -> bool:
            return not stop.is_set()

    return _NotStopped()


def _why_unreachable(exc: BaseException) -> str:
    """A description of a connection failure without the URL (see module doc)."""
    seen, cur = set(), exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError):
            return "unreachable: connection refused"
        if isinstance(cur, OSError) and "Name or service not known" in str(cur.args[-1:]):
            return "unreachable: unknown host"
        cur = cur.__cause__ or cur.__context__ or (cur.args[0] if cur.args and
                                                   isinstance(cur.args[0], BaseException)
                                                   else None)
    return "unreachable: cannot connect"
