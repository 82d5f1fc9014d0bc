"""The one retry policy of archiver: full-jitter exponential backoff that honours Retry-After.

Built on :mod:`tenacity`. A call is retried when it raises
:class:`~archiver.errors.SourceError` with ``retryable=True`` (connection errors, 5xx, 429,
a body cut short); anything else propagates at once, so a refused API key costs exactly one
request.

The wait before retry *n* (1-based) is, by order of preference:

* the server's ``Retry-After`` (``err.retry_after``, seconds), capped at
  :attr:`RetryPolicy.retry_after_cap` (``4 * max`` by default) so that a hostile or
  misconfigured server cannot park a worker for hours;
* otherwise "full jitter": a uniform random wait in ``[0, min(max, base * 2 ** (n-1))]``
  (``tenacity.wait_random_exponential``), which spreads the retries of many concurrent
  workers instead of having them hammer the server in lockstep.

When the retries are exhausted the last error is re-raised as a new ``SourceError`` with
``retryable=False`` (same status and code, message ending in "gave up after N attempts"):
an outer retry loop (the pipeline restarting a whole artifact) must not multiply the
attempts of an inner one.

The same policy object serves the source (requests up to the response headers) and the
pipeline (whole-artifact restarts after a mid-body failure)::

    policy = RetryPolicy(retries=5, base=0.5, max=30)
    data = policy.call(lambda: fetch(), describe="job job_1 artifact a/b.json")
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections.abc import Callable
from datetime import timezone
from typing import TypeVar

import tenacity

from .errors import SourceError

log = logging.getLogger("archiver.retry")

T = TypeVar("T")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    Returns None when absent or unparseable; never negative.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # HTTP dates are GMT
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, SourceError) and exc.retryable


class RetryPolicy:
    """Retries ``SourceError(retryable=True)`` with full-jitter backoff.

    ``retries`` is the number of attempts *after* the first (0 = no retry); ``base`` the
    first backoff window in seconds; ``max`` the largest backoff window;
    ``retry_after_cap`` the largest honoured ``Retry-After`` (default ``4 * max``).
    ``sleep`` is injectable so that the pipeline can wake early on shutdown.
    """

    def __init__(self, retries: int = 5, base: float = 0.5, max: float = 30.0, *,
                 retry_after_cap: float | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        if retries < 0 or base < 0 or max < 0:
            raise ValueError("retries, base and max must be >= 0")
        self.retries = retries
        self.base = base
        self.max = max
        self.retry_after_cap = 4 * max if retry_after_cap is None else retry_after_cap
        self._sleep = sleep
        self._jitter = tenacity.wait_random_exponential(multiplier=base, max=max)

    def __repr__(self) -> str:
        return (f"RetryPolicy(retries={self.retries}, base={self.base}, max={self.max}, "
                f"retry_after_cap={self.retry_after_cap})")

    @property
    def attempts(self) -> int:
        """Total attempts a call may make."""
        return self.retries + 1

    def sleep_for(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.retry_after_cap)
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = max(1, attempt)
        return self._jitter(state)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return self.sleep_for(state.attempt_number, getattr(exc, "retry_after", None))

    def call(self, fn: Callable[[], T], describe: str = "") -> T:
        """Run ``fn()``; retry it on retryable ``SourceError``; return its result.

        ``describe`` names what is attempted (job, artifact) in log lines.
        """
        try:
            return fn()  # most calls succeed first time: no retry machinery for them
        except SourceError as exc:
            if not exc.retryable:
                raise
            first: list[SourceError] = [exc]

        def attempt() -> T:  # tenacity's attempt 1 is the failure above, replayed
            if first:
                raise first.pop()
            return fn()

        what = describe or getattr(fn, "__name__", "call")

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception()
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.2fs", what,
                        state.attempt_number, self.attempts, exc,
                        state.next_action.sleep if state.next_action else 0.0)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(_is_retryable),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except SourceError as exc:
            if not exc.retryable:
                raise
            # retryable but out of attempts: hand on a final, non-retryable error
            note = f" (gave up after {self.attempts} attempt{'s' if self.attempts > 1 else ''})"
            final = SourceError(f"{exc}{note}", retryable=False, status=exc.status,
                              code=exc.code, retry_after=exc.retry_after)
            raise final from exc
