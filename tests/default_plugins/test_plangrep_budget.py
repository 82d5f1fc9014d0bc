"""The Plangrep source and the fleet API budget (``use_budget``): every request takes a
token first, and a 429 with Retry-After pauses the budget before the retry waits."""

from __future__ import annotations

import threading

import pytest

from archiver.default_plugins.plangrep import PlangrepConfig, PlangrepSource
from archiver.errors import SourceError
from archiver.testing.emulator import ArtifactSpec


class RecordingBudget:
    """Counts acquires and records pauses (with how many requests were answered then)."""

    def __init__(self, emu, allow: bool = True):
        self.emu, self.allow = emu, allow
        self.acquired, self.pauses = 0, []
        self.lock = threading.Lock()

    def acquire(self, stop=None) -> bool:
        with self.lock:
            self.acquired += 1
        return self.allow

    def pause(self, seconds: float) -> None:
        self.pauses.append((seconds, len(self.emu.requests.snapshot())))


def make_source(emu) -> PlangrepSource:
    return PlangrepSource(PlangrepConfig(base_url=emu.base_url, api_key=emu.api_key,
                                         backoff_base=0.01, backoff_max=0.05, retries=3))


def test_every_request_takes_a_token_first(emu):
    emu.add_project(project_id="proj_b", name="B")
    raw = emu.add_job("proj_b", artifacts=[ArtifactSpec("a.bin", 1000, where="document"),
                                           ArtifactSpec("b.bin", 2000, where="result")])
    source, budget = make_source(emu), RecordingBudget(emu)
    source.use_budget(budget)
    try:
        jobs = list(source.iter_jobs())                      # projects + jobs listing
        job = source.get_job(raw["id"])                      # job
        result = source.read_result(job)                     # result
        for artifact in source.find_artifacts(job, result):  # artifacts
            with source.open(artifact) as download:
                b"".join(download)
        source.preflight()
    finally:
        source.close()
    assert [j.id for j in jobs] == [raw["id"]]
    api = [r for r in emu.requests.snapshot() if r.route != "storage"]
    assert {r.route for r in api} >= {"projects", "jobs", "job", "result", "artifact"}
    assert budget.acquired == len(api) == 7 and budget.pauses == []


def test_a_429_pauses_the_budget_before_the_retry(emu):
    emu.add_project(project_id="proj_b", name="B")
    raw = emu.add_job("proj_b", artifacts=[ArtifactSpec("a.bin", 10, where="document")])
    emu.faults.rate_limit_retry_after = 1
    emu.faults.rate_limit_n = 1
    source, budget = make_source(emu), RecordingBudget(emu)
    source.use_budget(budget)
    try:
        job = source.get_job(raw["id"])
    finally:
        source.close()
    assert job.id == raw["id"]
    statuses = [r.status for r in emu.requests.snapshot()]
    assert statuses == [429, 200]
    assert budget.pauses == [(1.0, 1)]  # paused after the 429, before the retry was sent
    assert budget.acquired == 2


def test_nothing_is_sent_once_the_budget_says_stop(emu):
    source = make_source(emu)
    source.use_budget(RecordingBudget(emu, allow=False))
    try:
        with pytest.raises(SourceError, match="not sent, archiver is stopping"):
            source.get_job("job_x")
    finally:
        source.close()
    assert emu.requests.snapshot() == []
