"""Fixtures: receivers, the emulator, a config writer, and a clean notifier per test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # notify_receiver, like s3_testing

from archiver_notify import plugin  # noqa: E402
from notify_receiver import Receiver  # noqa: E402


@pytest.fixture(autouse=True)
def clean_notifier():
    """Each test's notifier is flushed and switched off afterwards, so nothing it queued
    reaches a later test (one process runs many configs here; see the README)."""
    yield
    plugin.activate(None)
    plugin.flush_all(timeout=0)


@pytest.fixture
def receiver():
    made = []

    def make(status: int = 200, delay: float = 0.0) -> Receiver:
        r = Receiver(status, delay).__enter__()
        made.append(r)
        return r

    yield make
    for r in made:
        r.__exit__(None, None, None)


@pytest.fixture
def emu(plangrep_emulator):
    return plangrep_emulator
