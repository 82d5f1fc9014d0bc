"""The fork server (archiver.workers.zygote / .forkserver): worker processes are forked
from one zygote, behave like the Popen children they replace (exit codes, signals,
their own argv, environment and stdio), and nothing outlives the supervisor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from worker_helpers import env_for, process_state, wait_for, worker_config

from archiver.workers import forkserver
from archiver.workers.forkserver import UNKNOWN_EXIT, ForkedProcess, ForkServer
from archiver.workers.supervisor import Supervisor

ARCHIVER = [sys.executable, "-m", "archiver"]


@pytest.fixture
def config(emu, tmp_path, monkeypatch):
    for key, value in env_for(emu).items():  # the zygote and children inherit this
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    monkeypatch.delenv(forkserver.ENV_SWITCH, raising=False)
    return str(worker_config(emu, tmp_path))


@pytest.fixture
def server():
    started: list[ForkServer] = []

    def start() -> ForkServer:
        fs = ForkServer()
        started.append(fs)
        assert fs.start(), "the fork server did not start"
        return fs

    yield start
    for fs in started:
        for child in list(fs._children.values()):
            child.kill()
        fs.close()


class Events:
    def __init__(self):
        self.got: list[tuple[int, dict]] = []
        self.deaths: list[tuple[int, int]] = []

    def __call__(self, event, child):
        self.got.append((child.index, event))

    def death(self, child, rc):
        self.deaths.append((child.index, rc))

    def hellos(self) -> dict[int, dict]:
        return {i: e for i, e in list(self.got) if e.get("type") == "hello"}


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    return process_state(pid) in ("", "Z")


def test_children_are_forked_from_the_zygote_and_end_cleanly(config):
    events = Events()
    sup = Supervisor(config, 2, events, on_death=events.death, worker_args=["--drain"])
    try:
        sup.start()
        zygote = sup.fork_server
        assert isinstance(zygote, ForkServer) and zygote.pid == zygote.proc.pid
        assert b"archiver.workers.zygote" in Path(f"/proc/{zygote.pid}/cmdline").read_bytes()
        assert os.getsid(zygote.pid) == zygote.pid  # its own session too
        for child in list(sup.children.values()):
            assert isinstance(child.proc, ForkedProcess)
            if not gone(child.pid):
                assert ppid(child.pid) == zygote.pid
                assert os.getsid(child.pid) == child.pid
        sup.wait_all(30)
        assert sup.alive == 0 and sup.deaths == 0 and events.deaths == []
        hellos = events.hellos()
        assert sorted(hellos) == [0, 1]  # their stdout pipes reached us
        assert all(h["pid"] != zygote.pid for h in hellos.values())
    finally:
        sup.close()
    assert zygote.proc.returncode == 0  # closed: it exited on EOF and was reaped


def test_exit_codes_and_kill_9_propagate(config, server):
    fs = server()
    bad = fs.spawn([*ARCHIVER, "worker", "-c", "/nonexistent/archiver.yaml", "--jsonl"],
                   dict(os.environ))
    assert bad.wait(30) == 2  # could not start: configuration
    assert bad.cpu is not None and bad.cpu > 0
    ok = fs.spawn([*ARCHIVER, "worker", "-c", config, "--jsonl", "--drain"], dict(os.environ))
    assert ok.wait(30) == 0
    long = fs.spawn([*ARCHIVER, "worker", "-c", config, "--jsonl"], dict(os.environ))
    assert json.loads(long.stdout.readline())["pid"] == long.pid
    with pytest.raises(subprocess.TimeoutExpired):
        long.wait(0.2)
    assert long.poll() is None
    os.kill(long.pid, signal.SIGKILL)  # by pid, as an operator (or a test) would
    assert long.wait(10) == -signal.SIGKILL
    long.send_signal(signal.SIGTERM)  # reaped: nothing happens, nothing raises


def test_signals_reach_the_children_and_sigterm_drains(config):
    events = Events()
    sup = Supervisor(config, 2, events, on_death=events.death)  # long-lived children
    try:
        sup.start()
        wait_for("both children", lambda: len(events.hellos()) == 2)
        first = sup.children[0]
        os.kill(first.pid, signal.SIGSTOP)
        wait_for("stopped", lambda: process_state(first.pid) == "T")
        os.kill(first.pid, signal.SIGCONT)
        assert first.proc.poll() is None  # stopped and continued: not a death
        sup.stop()  # SIGTERM through the pidfd: the long-lived workers drain, exit 0
        sup.wait_all(30)
        assert sup.alive == 0 and sup.deaths == 0 and events.deaths == []
    finally:
        sup.signal_all(signal.SIGKILL)
        sup.wait_all(5)
        sup.close()


def test_a_child_has_its_own_argv_environment_stdio_and_no_zygote_fds(config, server,
                                                                        tmp_path):
    fs = server()
    env = dict(os.environ)
    version = fs.spawn([*ARCHIVER, "--version"], {**env, "ARCHIVER_DISABLE_PLUGINS": "decompress"})
    out = version.stdout.read().decode()
    assert version.wait(30) == 0
    assert out.startswith("archiver ") and "checksum" in out and "decompress" not in out
    other = fs.spawn([*ARCHIVER, "plugins"], env)  # the zygote's environment is not kept
    assert "decompress" in other.stdout.read().decode() and other.wait(30) == 0

    (tmp_path / "cwd").mkdir()
    os.chdir(tmp_path / "cwd")  # a relative config file: resolved in the child's cwd
    try:
        Path("rel.yaml").write_text(Path(config).read_text())
        long = fs.spawn([*ARCHIVER, "worker", "-c", "rel.yaml", "--jsonl"],
                        {**env, "ARCHIVER_WORKER_INDEX": "7"})
    finally:
        os.chdir(Path(__file__).parent)
    assert json.loads(long.stdout.readline())["type"] == "hello"
    fds = {os.readlink(f"/proc/{long.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{long.pid}/fd")}
    assert os.readlink(f"/proc/{long.pid}/fd/0") == os.devnull
    assert os.readlink(f"/proc/{long.pid}/fd/1").startswith("pipe:")
    zygotes = {os.readlink(f"/proc/{fs.pid}/fd/{fd}")
               for fd in os.listdir(f"/proc/{fs.pid}/fd") if int(fd) > 2}
    assert any(z.startswith("socket:") for z in zygotes)
    assert not fds & zygotes  # its control socket and pidfds: closed in the child
    assert Path(f"/proc/{long.pid}/comm").read_text().strip() == "archiver-worker"
    long.kill()  # (a SIGTERM this early could precede the worker's signal handlers)
    assert long.wait(30) == -signal.SIGKILL


def test_the_zygote_exits_when_its_supervisor_dies(config, tmp_path):
    """kill -9 of the supervisor: the zygote sees EOF and exits (no orphan zygote). Its
    children are in sessions of their own, as Popen children are: what they do then
    does not depend on the zygote (they end at their next write to the closed pipe)."""
    script = tmp_path / "sup.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys, time
        from archiver.workers.supervisor import Supervisor
        sup = Supervisor({config!r}, 1, lambda e, c: None)
        sup.start()
        print(json.dumps([sup.fork_server.pid, [c.pid for c in sup.children.values()]]),
              flush=True)
        time.sleep(120)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    zygote, children = json.loads(proc.stdout.readline())
    try:
        assert ppid(zygote) == proc.pid and ppid(children[0]) == zygote
        proc.kill()
        proc.wait(10)
        wait_for("the zygote to exit", lambda: gone(zygote), timeout=10)
    finally:
        proc.kill()
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_fallback_to_popen_when_the_zygote_cannot_start(config, monkeypatch):
    monkeypatch.setattr(forkserver, "command",
                        lambda fd: [sys.executable, "-c", "raise SystemExit(3)"])
    events = Events()
    sup = Supervisor(config, 1, events, on_death=events.death, worker_args=["--drain"])
    sup.start()
    assert isinstance(sup.fork_server, ForkServer) and sup.fork_server.dead
    assert sup.fork_server.proc.returncode == 3  # reaped
    assert all(isinstance(c.proc, subprocess.Popen) for c in sup.children.values())
    sup.wait_all(30)
    assert sup.deaths == 0 and sorted(events.hellos()) == [0]
    sup.close()


def test_a_launched_zygote_nobody_used_is_killed_at_close(config):
    fs = ForkServer()
    fs.launch()  # as a run does at its first job to archive, during the listing
    pid = fs.proc.pid
    fs.close()  # nothing was queued after all: its imports are of no use
    assert fs.proc.returncode is not None and gone(pid)
    assert fs.spawn([*ARCHIVER, "--version"], dict(os.environ)) is None


def test_fork_server_switched_off(config, monkeypatch):
    monkeypatch.setenv(forkserver.ENV_SWITCH, "0")
    sup = Supervisor(config, 1, lambda e, c: None, worker_args=["--drain"])
    sup.start()
    assert sup.fork_server is False
    assert all(isinstance(c.proc, subprocess.Popen) for c in sup.children.values())
    sup.wait_all(30)
    sup.close()


def test_a_dead_zygote_leaves_its_children_watched_and_popen_takes_over(config):
    events = Events()
    sup = Supervisor(config, 2, events, on_death=events.death)
    try:
        sup.spawn(0)
        wait_for("the first child", lambda: len(events.hellos()) == 1)
        os.kill(sup.fork_server.pid, signal.SIGKILL)
        wait_for("the zygote's loss", lambda: sup.fork_server.dead, timeout=10)
        second = sup.spawn(1)
        assert isinstance(second.proc, subprocess.Popen)  # the fallback
        first = sup.children[0]
        assert first.proc.poll() is None  # still running, watched through its pidfd
        first.proc.send_signal(signal.SIGKILL)  # still reachable
        ended = wait_for("the first child's end", lambda: sup.reap(), timeout=10)
        assert [(c.index, rc) for c, rc in ended] == [(0, UNKNOWN_EXIT)]
    finally:
        sup.signal_all(signal.SIGKILL)
        sup.wait_all(5)
        sup.close()


def test_interpreter_environment_changes_use_popen(config, server):
    fs = server()
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    assert fs.spawn([*ARCHIVER, "--version"], env) is None  # a fork cannot redo that
    assert fs.spawn([sys.executable, "-c", "pass"], dict(os.environ)) is None  # refused
    assert not fs.dead  # a refusal is not a loss
    child = fs.spawn([*ARCHIVER, "--version"], dict(os.environ))
    assert child is not None and child.wait(30) == 0
