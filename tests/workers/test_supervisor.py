"""archiver.workers.supervisor and the WorkerPool of watch/serve: real ``archiver worker``
child processes, their JSON events, deaths (SIGKILL) and graceful stops."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from worker_helpers import env_for, wait_for, worker_config

from archiver.ledger import INCOMPLETE, WorkerId, new_worker_id, open_ledger
from archiver.model import Job
from archiver.runtime import Runtime
from archiver.workers.fleet import WorkerPool
from archiver.workers.supervisor import Supervisor, respawn_delay


@pytest.fixture
def config(emu, tmp_path, monkeypatch):
    for key, value in env_for(emu).items():  # the children inherit this environment
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    return str(worker_config(emu, tmp_path))


class Events:
    def __init__(self):
        self.got: list[tuple[int, dict]] = []
        self.deaths: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, event, child):
        with self.lock:
            self.got.append((child.index, event))

    def death(self, child, rc):
        self.deaths.append((child.index, rc))

    def hellos(self) -> dict[int, dict]:
        with self.lock:
            return {i: e for i, e in self.got if e.get("type") == "hello"}


def test_drained_children_end_cleanly(config):
    events = Events()
    sup = Supervisor(config, 2, events, on_death=events.death, worker_args=["--drain"])
    sup.start()
    sup.wait_all(30)
    sup.close()  # the fork server, if any
    assert sup.alive == 0 and sup.deaths == 0 and events.deaths == []
    hellos = events.hellos()
    assert sorted(hellos) == [0, 1]
    ids = [WorkerId.parse(h["worker_id"]) for h in hellos.values()]
    assert all(i is not None and i.local for i in ids)
    assert sorted(i.pid for i in ids) == sorted(h["pid"] for h in hellos.values())


def test_a_killed_child_is_a_death_a_stopped_one_is_not(config):
    events = Events()
    sup = Supervisor(config, 2, events, on_death=events.death)  # long-lived children
    try:
        sup.start()
        wait_for("both children", lambda: len(events.hellos()) == 2)
        children = dict(sup.children)
        for child in children.values():  # own sessions: a terminal's Ctrl-C spares them
            assert os.getsid(child.pid) == child.pid
            assert child.worker_id == events.hellos()[child.index]["worker_id"]
        os.kill(children[0].pid, signal.SIGKILL)
        ended = wait_for("the death", lambda: sup.reap(), timeout=10)
        assert [(c.index, rc) for c, rc in ended] == [(0, -signal.SIGKILL)]
        assert events.deaths == [(0, -signal.SIGKILL)] and sup.deaths == 1
        sup.stop()  # SIGTERM: the long-lived worker drains and exits 0
        sup.wait_all(30)
        assert sup.alive == 0 and sup.deaths == 1 and len(events.deaths) == 1
    finally:
        sup.signal_all(signal.SIGKILL)
        sup.wait_all(5)
        sup.close()


def test_the_pool_expires_a_dead_childs_leases_and_respawns_it(config, tmp_path):
    """watch/serve --workers N: a child killed while holding a job leaves a lease that is
    expired at once (its pid is gone: nothing to wait for), and a new child takes its
    place."""
    job = Job("job_held", "proj", "completed", {"id": "job_held", "projectId": "proj",
                                                "status": "completed"})
    with Runtime.open(config) as rt:
        pool = WorkerPool(rt, config, 2).start()
        led = open_ledger(tmp_path / "state")
        try:
            wait_for("two workers", lambda: len(pool.pids) == 2
                     and len(rt.ledger.workers()) == 2, timeout=30)
            victim = pool.pids[0]
            (worker_id,) = [w.worker_id for w in rt.ledger.workers() if w.pid == victim]
            # the victim holds a job, as if it were archiving it; the job is backing
            # off, so that no other worker of the pool claims it once it is free
            assert led.claim(job, "w-before", 60, max_lost=3).ok
            led.finish_job(job, "w-before", INCOMPLETE, "x", not_before=time.time() + 600)
            assert led.claim(job, worker_id, 60, max_lost=3, ignore_backoff=True).ok
            os.kill(victim, signal.SIGKILL)
            wait_for("a new worker", lambda: len(pool.pids) == 2 and victim not in pool.pids,
                     timeout=30)
            (row,) = led.job_rows(job.id)
            assert row.lease_until < time.time()  # expired, not waiting for the ttl
            assert worker_id not in [w.worker_id for w in led.workers()]
            got = led.claim(job, new_worker_id().id, 60, max_lost=3, ignore_backoff=True)
            assert got.ok and got.lost_leases == 1  # the death counts as a lost lease
        finally:
            led.close()
            pool.close(grace=1)
        assert pool.sup.alive == 0


def test_command_and_respawn_delay(config):
    sup = Supervisor(config, 1, lambda e, c: None, worker_args=["--drain"], verbosity=2)
    cmd = sup.command()
    assert cmd[1:] == ["-m", "archiver", "-vv", "worker", "-c", config, "--jsonl",
                       "--drain"]
    assert [respawn_delay(n) for n in (0, 1, 2, 3, 4, 7, 50)] == [0, 0, 1, 2, 4, 30, 30]


@pytest.mark.parametrize("progress", [True, False])
def test_children_send_progress_only_when_somebody_shows_it(config, emu, tmp_path, progress):
    """progress=False (no display in the parent; always for watch/serve): ARCHIVER_PROGRESS=0
    in the children's environment, and they send only hello and outcome lines."""
    from archiver.testing.emulator import ArtifactSpec
    emu.add_project(project_id="proj_s", name="S")
    ids = [emu.add_job("proj_s", artifacts=[ArtifactSpec(f"f{i}.bin", 1000, where="document")])
           ["id"] for i in range(3)]
    led = open_ledger(tmp_path / "state")
    try:
        led.enqueue(Job(j["id"], j["projectId"], j["status"], j) for j in map(emu.job, ids))
    finally:
        led.close()
    events = Events()
    sup = Supervisor(config, 1, events, worker_args=["--drain"], progress=progress)
    try:
        sup.start()
        sup.wait_all(60)
    finally:
        sup.close()
    kinds = [e["type"] for _, e in events.got]
    assert kinds.count("outcome") == 3 and sup.deaths == 0
    assert ("progress" in kinds) is progress
