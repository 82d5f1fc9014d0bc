"""Issue "Many workers, one ledger": fault scenarios with real processes.

Real ``archiver`` processes (``run``, ``run --workers N``, ``worker``) on one config and
one SQLite ledger, the emulator over real HTTP with one slow artifact (``big.bin``) so
that the processes overlap, and real signals (SIGKILL, SIGSTOP/SIGCONT, ``os._exit`` in
a plugin). Each test states what it proves; the S3 variant of the kill test is in
plugins/archiver-s3/tests/test_s3_workers.py.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

from worker_helpers import (
    MiB,
    LedgerView,
    add_jobs,
    artifact_gets,
    children_of,
    env_for,
    gets_of,
    partial_files,
    process_state,
    stored_files,
    wait_for,
    worker_config,
)

from archiver.ledger import WorkerId, open_ledger
from archiver.model import Job


def assert_archived_once(view: LedgerView, jobs: list[str]) -> None:
    """Every job archived, by exactly one "archived" event and one archived job record
    in the audit chain."""
    states = view.states()
    assert {j: states.get(j) for j in jobs} == {j: "archived" for j in jobs}
    events, audit = view.archived_records()
    assert {j: events[j] for j in jobs} == {j: 1 for j in jobs}, events
    assert {j: audit[j] for j in jobs} == {j: 1 for j in jobs}, audit


def assert_each_artifact_fetched(emu, times: int = 1, *, except_: dict | None = None):
    gets = artifact_gets(emu)
    assert gets, "no artifact was downloaded"
    for (url, path), n in gets.items():
        assert n == (except_ or {}).get(path, times), (url, path, n, dict(gets))


# --------------------------------------------------------------------------- 1
def test_two_runs_at_once_archive_each_job_once(emu, tmp_path, spawn):
    """The original bug: a second ``archiver run`` started while the first was writing
    ran its crash recovery and discarded the first run's live temporary file. Now
    recovery discards only writers of dead processes, and claims keep the second run off
    the job the first holds: it reports that job as busy (exit 0, docs/cli.md), every job
    is archived once and every artifact is downloaded once."""
    slow, small = add_jobs(emu)
    cfg = worker_config(emu, tmp_path)
    env = env_for(emu)
    view = LedgerView(tmp_path / "state")
    try:
        first = spawn("first", ["run", "-c", str(cfg), "--json"], env)
        # The second starts while the first writes big.bin: its recovery sees the live
        # writer's pending row and temporary file.
        (live,) = wait_for("the first run writing big.bin", lambda: view.pending("big.bin")
                           and partial_files(tmp_path / "archive", "big.bin"), procs=(first,))
        second = spawn("second", ["run", "-c", str(cfg), "--json"], env)
        rc2 = second.wait(60)
        assert first.proc.poll() is None, "the slow artifact must outlast the second run"
        assert live.exists(), "the second run removed the first run's live temporary file"
        rc1 = first.wait(60)
        assert (rc1, rc2) == (0, 0), first.stderr + second.stderr
        one, two = first.json(), second.json()
        assert slow in one["archived"] and two["archived"] == []
        assert list(two["busy"]) == [slow] and "held by" in two["busy"][slow]
        assert sorted(one["archived"]) == sorted([slow, *small])
        assert_archived_once(view, [slow, *small])
        assert_each_artifact_fetched(emu)
        assert not view.events("discarded") and not view.pending()
        assert not partial_files(tmp_path / "archive")
        assert len(stored_files(tmp_path / "archive", "big.bin")) == 1
    finally:
        view.close()


# --------------------------------------------------------------------------- 2
def test_kill_9_of_a_worker_mid_artifact(emu, tmp_path, spawn):
    """``run --workers 2``: the child downloading big.bin is killed (SIGKILL). The
    supervisor expires its leases and discards its temporary file; a new child takes the
    job over in the same pass and the run ends with every job archived once; nothing
    partial, no pending writer, and ``cleanup`` finds nothing left."""
    slow, small = add_jobs(emu)
    cfg = worker_config(emu, tmp_path)
    env = env_for(emu)
    view = LedgerView(tmp_path / "state")
    try:
        run = spawn("run", ["run", "-c", str(cfg), "--workers", "2", "--json"], env)
        wait_for("the small jobs", lambda: all(view.states().get(j) == "archived"
                                               for j in small), procs=(run,))
        wait_for("a worker writing big.bin", lambda: view.holder_pid("big.bin")
                 and partial_files(tmp_path / "archive", "big.bin"), procs=(run,))
        # notes.json's records are committed within a second while big.bin goes on
        # (jobrecords): killed before that, it would be fetched again too (found stored)
        wait_for("notes.json recorded", lambda: any(
            p == "notes.json" for p, _ in view.led.copies(slow)), procs=(run,))
        victim = view.holder_pid("big.bin")
        assert victim in children_of(run.pid), "the writer must be a child of the run"
        os.kill(victim, signal.SIGKILL)
        assert run.wait(60) == 0, run.stderr
        report = run.json()
        assert sorted(report["archived"]) == sorted([slow, *small]), report
        assert not report["incomplete"] and not report["busy"]
        assert "died with signal SIGKILL" in run.stderr
        assert_archived_once(view, [slow, *small])
        assert view.job(slow).attempts == 2  # the dead child's attempt, then the new one
        assert_each_artifact_fetched(emu, except_={"big.bin": 2})
        assert not partial_files(tmp_path / "archive") and not view.pending()
        assert len(stored_files(tmp_path / "archive", "big.bin")) == 1
        out = spawn("cleanup", ["cleanup", "-c", str(cfg), "--json"], env)
        assert out.wait(30) == 0, out.stderr
        left = out.json()
        assert left["discarded"] == [] and left["errors"] == []
        assert all(not v for v in left["removed_by_listing"].values()), left
    finally:
        view.close()


# --------------------------------------------------------------------------- 3
def stop_outside_a_transaction(pid: int, db: Path) -> None:
    """SIGSTOP ``pid``, but not while it holds the SQLite write lock (a stopped process
    holding it would stall every other process: a property of SQLite, not under test)."""
    for _ in range(50):
        os.kill(pid, signal.SIGSTOP)
        wait_for("the worker to stop", lambda: process_state(pid) == "T", timeout=5,
                 step=0.005)
        con = sqlite3.connect(db, timeout=0.2)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
            return
        except sqlite3.OperationalError:
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.01)
        finally:
            con.close()
    raise AssertionError("the worker kept the ledger locked")


def test_sigstop_past_the_lease_then_sigcont(emu, tmp_path, spawn):
    """Two ``archiver worker`` processes on a queue filled through the ledger API. The
    one writing big.bin is stopped (SIGSTOP) longer than its lease; the other takes the
    job over. After SIGCONT the stopped one notices at its first heartbeat (self-fence:
    no heartbeat for longer than lease.self_fence), aborts its writer and its fenced
    finish is refused (LeaseLost): the job is archived exactly once, one stored file,
    nothing partial."""
    slow, small = add_jobs(emu, big=8 * MiB)
    cfg = worker_config(emu, tmp_path)
    env = env_for(emu)
    led = open_ledger(tmp_path / "state")
    try:
        jobs = [emu.job(j) for j in [slow, *small]]
        assert led.enqueue(Job(j["id"], j["projectId"], j["status"], j) for j in jobs) == 5
    finally:
        led.close()
    view = LedgerView(tmp_path / "state")
    workers = [spawn(f"worker{i}", ["worker", "-c", str(cfg)], env) for i in (1, 2)]
    try:
        pid = wait_for("a worker writing big.bin", lambda: view.holder_pid("big.bin"),
                       procs=tuple(workers))
        (stopped,) = [w for w in workers if w.pid == pid]
        (other,) = [w for w in workers if w is not stopped]
        stop_outside_a_transaction(pid, tmp_path / "state" / "ledger.sqlite")
        stopped_at = time.monotonic()

        def taken_over():
            owner = view.job(slow).owner
            return owner is not None and WorkerId.parse(owner).pid == other.pid

        wait_for("the other worker to take the job over", taken_over, timeout=20,
                 procs=(other,))
        assert time.monotonic() - stopped_at > 3  # the lease (ttl 3 s) had to run out
        os.kill(pid, signal.SIGCONT)
        wait_for("the job archived", lambda: view.states().get(slow) == "archived",
                 timeout=30, procs=tuple(workers))
        wait_for("the stopped worker to give up", lambda: "its final state is left to "
                 "the new owner" in stopped.stderr, timeout=15, procs=(stopped,))
        err = stopped.stderr
        assert "lease.self_fence" in err and "lease lost" in err, err
        wait_for("every small job", lambda: all(view.states().get(j) == "archived"
                                                for j in small), procs=tuple(workers))
        for w in workers:
            w.proc.send_signal(signal.SIGTERM)
        assert [w.wait(30) for w in workers] == [0, 0], stopped.stderr + other.stderr
        assert_archived_once(view, [slow, *small])
        assert len(stored_files(tmp_path / "archive", "big.bin")) == 1
        assert not partial_files(tmp_path / "archive") and not view.pending()
        assert gets_of(emu, "big.bin") == 2  # the stopped worker never fetched it again
        stored = [e for e in view.events("stored") if e.path == "big.bin"]
        assert len(stored) == 1 and len(view.led.job_report(slow)["copies"]) == 4
    finally:
        view.close()


# --------------------------------------------------------------------------- 4
POISON_PLUGIN = '''\
"""A plugin whose hook kills the worker process on one job (a crashing plugin)."""
import os

from archiver.hookspecs import hookimpl


@hookimpl
def archiver_ignore_artifact(job, artifact):
    if job.id == os.environ.get("POISON_JOB"):
        os._exit(1)
    return None
'''


def install_plugin(site: Path) -> None:
    """A real entry point: a distribution's metadata on PYTHONPATH, as pip would leave
    it (importlib.metadata finds it; no installation needed)."""
    site.mkdir()
    (site / "poison_plugin.py").write_text(POISON_PLUGIN)
    info = site / "poison_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: poison-plugin\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text("[archiver]\npoison = poison_plugin\n")


def test_poison_job_is_parked(emu, tmp_path, spawn):
    """A plugin calls ``os._exit(1)`` on one job: with ``run --workers 2`` each worker
    holding it dies; after ``lease.max_lost`` (2) lost leases the job is parked (a
    "parked" event naming it, the archiver_parked_jobs metric), every other job is
    archived, the JSON report lists the job under "parked" and the exit code is 1."""
    slow, small = add_jobs(emu, big=4000, slow=0)
    poison = small[1]
    site = tmp_path / "site"
    install_plugin(site)
    path = worker_config(emu, tmp_path)
    # one job per worker at a time: a dying worker takes down no innocent job with it
    path.write_text(path.read_text().replace("concurrency: 4", "concurrency: 1"))
    env = env_for(emu, entry_points=True, POISON_JOB=poison,
                  PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    run = spawn("run", ["run", "-c", str(path), "--workers", "2", "--json"], env)
    assert run.wait(90) == 1, run.stderr
    report = run.json()
    assert list(report["parked"]) == [poison], report
    assert "parked after 2 lost leases" in report["parked"][poison]
    assert sorted(report["archived"]) == sorted({slow, *small} - {poison})
    assert report["exit_code"] == 1 and not report["incomplete"]
    assert run.stderr.count("died with exit code 1") == 2, run.stderr
    view = LedgerView(tmp_path / "state")
    try:
        parked = view.events("parked")
        assert [e.job_id for e in parked] == [poison]
        assert "parked after 2 lost leases" in parked[0].message
        row = view.job(poison)
        assert row.parked and row.state == "incomplete" and row.owner is None
        assert_archived_once(view, sorted({slow, *small} - {poison}))
        assert not view.pending() and not partial_files(tmp_path / "archive")
        from archiver.service.metrics import ServiceMetrics
        text = ServiceMetrics(view.led).render()[0].decode()
        assert "archiver_parked_jobs_total 1.0" in text, text
        assert "archiver_lost_leases_total 1.0" in text
    finally:
        view.close()
