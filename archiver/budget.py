"""The fleet API budget: one request rate, and one 429 pause, for every worker together.

``rate_limit: {requests_per_second: R, burst: B}`` (docs/configuration.md) makes every
process on the ledger take a token from one shared bucket (:meth:`RunLedger.take_tokens
<archiver.ledger.protocols.RunLedger.take_tokens>`) before each API request, so the
fleet as a whole sends at most R requests per second (after a burst of B). Celery's
``rate_limit`` (or any per-process limit) cannot do this: it is per worker, and N
workers send N times the rate. A 429 with ``Retry-After`` seen by any worker pauses the
bucket (``pause_tokens``), so every worker stops asking until then.

Tokens are taken in small batches (about 100 ms worth, at least 1) so that the ledger sees
a few calls per second per process, not one per request; tokens a process took and did
not use within their window are dropped (a pause recorded elsewhere meanwhile then
costs at most that window). The ledger is the coordination, not a dependency: when taking
tokens fails (PostgreSQL restarting, a dry run's read-only ledger), a warning is logged and
this process limits itself alone to the same rate for that moment, so archiving goes on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import LedgerError
from .ledger.coordination import bucket

log = logging.getLogger("archiver.budget")

WARN_EVERY = 60.0  # seconds between two warnings about the ledger (one per outage, roughly)


class LocalBucket:
    """The same token bucket in this process only (the fallback)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.updated, self.paused_until = float(burst), clock(), 0.0

    def take(self, want: int) -> tuple[int, float]:
        now = self.clock()
        self.tokens, granted, wait = bucket(self.tokens, self.updated, self.paused_until, now,
                                            want=want, rate=self.rate, burst=self.burst)
        self.updated = max(self.updated, now)
        return granted, wait

    def pause(self, seconds: float) -> None:
        now = self.clock()
        self.paused_until = max(self.paused_until, now + seconds)
        self.tokens, self.updated = 0.0, self.paused_until


class FleetBudget:
    """A token bucket named ``name`` on ``ledger``, refilled at ``rate`` requests/s up to
    ``burst``, shared by every process using the same ledger and name.

    ``acquire(stop)`` blocks until one request may be sent (False when ``stop``, or the
    ``stop`` given here, got set first); ``pause(seconds)`` records a fleet-wide pause (a
    429 ``Retry-After``). Thread-safe: the threads of a process share one batch of tokens
    and one ledger call at a time. ``batch_seconds``: how much of the rate one ledger call
    asks for (``max(1, round(rate * batch_seconds))`` tokens)."""

    def __init__(self, ledger: Any, name: str, rate: float, burst: float, *,
                 stop: threading.Event | None = None, batch_seconds: float = 0.1,
                 clock: Callable[[], float] = time.monotonic):
        if not (rate > 0 and math.isfinite(rate)) or burst < 1:
            raise ValueError(f"FleetBudget: rate must be > 0 and burst >= 1 (got {rate!r}, "
                             f"{burst!r})")
        self.ledger, self.name, self.rate, self.burst = ledger, name, float(rate), float(burst)
        self.batch = max(1, min(int(burst), round(rate * batch_seconds)))
        # Unused tokens are dropped after this: a pause recorded elsewhere reaches us by then.
        self.window = max(batch_seconds, 1.0 / rate)
        self.stop, self.clock = stop, clock
        self.local = LocalBucket(self.rate, self.burst, clock)
        # A ledger without the method (a test double) is a local limit, with no warning; a
        # lookup on the type, because a dry run's ledger raises on any write method's name.
        self._shared = callable(getattr(type(ledger), "take_tokens", None))
        self._cond = threading.Condition()
        self._tokens, self._expires = 0, 0.0
        self._not_before = 0.0      # nothing to ask for before then (told to wait, or paused)
        self._asking = False        # one thread asks the ledger; the others wait for it
        self._warned_at: float | None = None
        self.ledger_calls = 0       # how many times the ledger was asked (tests, metrics)

    def __repr__(self) -> str:
        return f"FleetBudget({self.name!r}, rate={self.rate:g}/s, burst={self.burst:g})"

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until one request may be sent; False if ``stop`` got set first."""
        stop = stop or self.stop
        while True:
            if stop is not None and stop.is_set():
                return False
            with self._cond:
                now = self.clock()
                if self._tokens > 0 and now < self._expires:
                    self._tokens -= 1
                    return True
                if self._asking:  # another thread is asking the ledger: its batch is ours too
                    self._cond.wait(0.05)
                    continue
                delay = self._not_before - now
                if delay <= 0:
                    self._asking = True
            if delay > 0:
                self._sleep(min(delay, 0.25), stop)  # short steps: ``stop`` is honoured
                continue
            granted, wait = 0, 0.0
            try:
                granted, wait = self._take(self.batch)
            finally:
                with self._cond:
                    self._asking = False
                    now = self.clock()
                    self._tokens, self._expires = granted, now + self.window
                    if granted < self.batch:  # short: ask again once the rest has refilled,
                        # so a contended bucket costs a few calls a second, not a spin
                        missing = (self.batch - granted) / self.rate
                        self._not_before = max(self._not_before, now + max(wait, missing))
                    self._cond.notify_all()

    def pause(self, seconds: float) -> None:
        """Every worker on the ledger stops sending for ``seconds`` (a 429 Retry-After)."""
        seconds = max(0.0, float(seconds))
        with self._cond:
            self._tokens = 0
            self._not_before = max(self._not_before, self.clock() + seconds)
            self.local.pause(seconds)
        if self._shared:
            try:
                self.ledger.pause_tokens(self.name, seconds)
            except Exception as exc:  # noqa: BLE001 - a missed pause only costs 429s
                self._warn(exc, "record the pause")
        log.info("fleet API budget %s: paused for %.1fs (the API answered 429)", self.name,
                 seconds)

    # ------------------------------------------------------------------ internals
    def _take(self, want: int) -> tuple[int, float]:
        if self._shared:
            try:
                self.ledger_calls += 1
                return self.ledger.take_tokens(self.name, want, self.rate, self.burst)
            except Exception as exc:  # noqa: BLE001 - see the module docstring: go on alone
                self._warn(exc, "take tokens")
        return self.local.take(want)

    def _warn(self, exc: BaseException, what: str) -> None:
        now = self.clock()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY:
            return
        self._warned_at = now
        # LedgerError messages never hold the ledger's password; anything else is named
        # by its type only (a driver's message might quote a connection string).
        detail = f"{type(exc).__name__}: {exc}" if isinstance(exc, LedgerError) \
            else type(exc).__name__
        log.warning("fleet API budget %s: could not %s on the ledger (%s); this process "
                    "limits itself to %g requests/s alone meanwhile", self.name, what,
                    detail[:300], self.rate)

    @staticmethod
    def _sleep(seconds: float, stop: threading.Event | None) -> None:
        if stop is not None:
            stop.wait(seconds)
        else:
            time.sleep(seconds)


def from_settings(ledger: Any, rate_limit: Any, name: str, *,
                  stop: threading.Event | None = None) -> FleetBudget:
    """The budget of a ``rate_limit:`` section (:class:`archiver.config.RateLimitSettings`)."""
    return FleetBudget(ledger, name, rate_limit.requests_per_second, rate_limit.burst,
                       stop=stop)
