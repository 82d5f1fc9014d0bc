"""Fixtures of the worker tests: ``spawn`` starts ``archiver`` processes and kills any
still running when the test ends (a failed assertion leaves no process behind)."""

from __future__ import annotations

import pytest
from worker_helpers import Proc


@pytest.fixture
def spawn(tmp_path):
    started: list[Proc] = []

    def start(name: str, args: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(tmp_path, name, args, env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            proc.kill()
