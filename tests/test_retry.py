"""RetryPolicy: what is retried, how long it waits, what it raises when it gives up."""

from __future__ import annotations

import email.utils
import logging
import time

import pytest

from archiver.errors import AuthError, SourceError
from archiver.retry import RetryPolicy, parse_retry_after


class Flaky:
    """Fails with the given errors in order, then returns "ok"."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def policy(retries=3, base=0.5, max=8.0, **kw):
    sleeps: list[float] = []
    return RetryPolicy(retries, base, max, sleep=sleeps.append, **kw), sleeps


@pytest.mark.parametrize("value, expected", [
    ("0", 0.0), ("1", 1.0), (" 7 ", 7.0), ("2.5", 2.5), ("-3", 0.0),
    (None, None), ("", None), ("soon", None), ("nan", None),
])
def test_parse_retry_after_seconds(value, expected):
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date():
    now = time.time()
    header = email.utils.formatdate(now + 120, usegmt=True)
    assert 118 <= parse_retry_after(header, now=now) <= 121
    past = email.utils.formatdate(now - 600, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


def test_full_jitter_stays_in_its_window_and_varies():
    p, _ = policy(base=0.5, max=8.0)
    for attempt, high in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        waits = [p.sleep_for(attempt) for _ in range(200)]
        assert all(0.0 <= w <= high for w in waits)
        assert len(set(waits)) > 100  # random, not a fixed schedule
        assert max(waits) > high / 2  # the window really widens


def test_retry_after_wins_and_is_capped():
    p, _ = policy(max=8.0)
    assert p.sleep_for(1, retry_after=3) == 3
    assert p.sleep_for(1, retry_after=0) == 0
    assert p.sleep_for(1, retry_after=10_000) == 32.0  # 4 * max
    p2, _ = policy(max=8.0, retry_after_cap=5)
    assert p2.sleep_for(4, retry_after=60) == 5


def test_retryable_errors_are_retried_then_succeed():
    p, sleeps = policy(retries=3)
    fn = Flaky(SourceError("boom", retryable=True, status=503),
               SourceError("slow down", retryable=True, status=429, retry_after=1.5))
    assert p.call(fn, describe="job j1 artifact 'a'") == "ok"
    assert fn.calls == 3
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.5  # jitter window of attempt 1
    assert sleeps[1] == 1.5  # Retry-After honoured


@pytest.mark.parametrize("error", [
    SourceError("gone", retryable=False, status=410, code="job_expired"),
    AuthError("refused", status=401, code="unauthorized"),
    ValueError("a bug, not a network problem"),
])
def test_permanent_errors_are_raised_after_one_call(error):
    p, sleeps = policy(retries=5)
    fn = Flaky(error)
    with pytest.raises(type(error)) as info:
        p.call(fn)
    assert info.value is error
    assert fn.calls == 1 and sleeps == []


def test_exhausted_retries_raise_a_final_non_retryable_error():
    p, sleeps = policy(retries=2)
    errors = [SourceError(f"job j1 artifact 'x': HTTP 503 #{i}", retryable=True, status=503,
                          code="internal") for i in range(3)]
    fn = Flaky(*errors)
    with pytest.raises(SourceError) as info:
        p.call(fn, describe="job j1")
    final = info.value
    assert fn.calls == 3 and len(sleeps) == 2
    assert final.retryable is False
    assert final.status == 503 and final.code == "internal"
    assert "job j1 artifact 'x'" in str(final) and "gave up after 3 attempts" in str(final)
    assert final.__cause__ is errors[-1]


def test_zero_retries_means_one_attempt():
    p, sleeps = policy(retries=0)
    fn = Flaky(SourceError("boom", retryable=True))
    with pytest.raises(SourceError, match="gave up after 1 attempt"):
        p.call(fn)
    assert fn.calls == 1 and sleeps == []


def test_each_retry_is_logged_with_what_was_attempted(caplog):
    p, _ = policy(retries=1)
    with caplog.at_level(logging.WARNING, logger="archiver.retry"):
        p.call(Flaky(SourceError("HTTP 500", retryable=True)), describe="job j9 artifact 'p'")
    assert any("job j9 artifact 'p'" in r.getMessage() and "attempt 1/2" in r.getMessage()
               for r in caplog.records)


def test_policy_is_reusable_and_thread_independent():
    p, _ = policy(retries=1)
    assert p.call(Flaky(SourceError("x", retryable=True))) == "ok"
    assert p.call(Flaky(SourceError("x", retryable=True))) == "ok"  # no state carried over
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
