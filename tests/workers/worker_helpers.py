"""Helpers of the worker fault tests: real ``archiver`` processes on one config, an
emulator with a slow artifact, and looks at the shared ledger and the archive.

A module name of its own (not conftest) so the S3 plugin's worker test can import it too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from archiver.ledger import WorkerId, open_ledger
from archiver.testing.configs import basic_config
from archiver.testing.emulator import ArtifactSpec

MiB = 1 << 20
# Short leases, as a test needs them: a stalled worker loses its jobs after 3 s.
LEASE = "lease: {ttl: 3s, heartbeat: 1s, max_lost: 2}\n"
TEMP = re.compile(r"\.%%[0-9a-f]{16}\.partial$")
ARTIFACT_ROUTES = ("artifact", "project_artifact")


def worker_config(emu, tmp_path: Path, *, lease: str = LEASE, extra_sink: str = "",
                  top: str = "") -> Path:
    """A config file: ``basic_config`` (local sink ``primary``) with short leases, and
    named temporary files: what a killed worker leaves, and who discards it, is what
    these tests look at (unnamed ones leave nothing: tests/test_cli.py)."""
    path = tmp_path / "archiver.yaml"
    path.write_text(basic_config(emu, tmp_path, extra_sink=extra_sink, temp_files="named",
                                 top=textwrap.dedent(lease) + textwrap.dedent(top)))
    return path


def add_jobs(emu, *, big: int = 16 * MiB, small_jobs: int = 4, slow: float = 0.02,
             project: str = "proj_w") -> tuple[str, list[str]]:
    """One job with a slow artifact ``big.bin`` (``big`` bytes served 64 KiB per
    ``slow`` seconds) and ``small_jobs`` jobs of two small artifacts each."""
    emu.add_project(project_id=project, name="W")
    slow_job = emu.add_job(project, artifacts=[
        ArtifactSpec("notes.json", 300, where="document"),
        ArtifactSpec("big.bin", big, where="document")])["id"]
    small = [emu.add_job(project, artifacts=[
        ArtifactSpec(f"a{i}.json", 2000 + i, where="document"),
        ArtifactSpec(f"b{i}.bin", 4000 + i, where="result")])["id"]
        for i in range(small_jobs)]
    emu.faults.slow_body = slow
    emu.faults.fault_paths = {"big.bin"}
    return slow_job, small


def env_for(emu, *, entry_points: bool = False, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PLANGREP_API_KEY": emu.api_key, **extra}
    if not entry_points:  # the installed S3/GCS plugins only slow start-up down here
        env["ARCHIVER_LOAD_ENTRY_POINTS"] = "0"
    return env


class Proc:
    """One ``archiver`` process; its output goes to files (no pipe can fill up)."""

    def __init__(self, tmp_path: Path, name: str, args: list[str], env: dict[str, str]):
        self.name = name
        self.out_path, self.err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "archiver", *args],
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} still running after {timeout}s:\n"
                                 f"{self.stderr[-4000:]}") from None

    def kill(self) -> None:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
        self.proc.wait(10)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def json(self) -> dict:
        return json.loads(self.stdout)


def wait_for(what: str, check: Callable[[], object], timeout: float = 30,
             step: float = 0.05, procs: tuple[Proc, ...] = ()):
    """``check()``'s first true value; fails after ``timeout`` or when a process of
    ``procs`` has ended meanwhile (with its stderr)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        for p in procs:
            if p.proc.poll() is not None:
                raise AssertionError(f"{p.name} ended ({p.proc.returncode}) while waiting "
                                     f"for {what}:\n{p.stderr[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


class LedgerView:
    """Reads of the shared ledger, through a handle of this (test) process."""

    def __init__(self, state_dir: Path):
        self.led = open_ledger(state_dir)

    def close(self) -> None:
        self.led.close()

    def pending(self, path: str | None = None):
        return [r for r in self.led.list_pending() if path is None or r.path == path]

    def holder_pid(self, path: str) -> int | None:
        """The pid of the worker writing ``path`` right now (from its pending row)."""
        for row in self.pending(path):
            parsed = WorkerId.parse(row.owner) if row.owner else None
            if parsed is not None:
                return parsed.pid
        return None

    def states(self) -> dict[str, str]:
        return self.led.job_states()

    def job(self, job_id: str):
        (row,) = self.led.job_rows(job_id)
        return row

    def events(self, kind: str | None = None) -> list:
        return [e for e in self.led.event_rows(limit=100_000) if kind in (None, e.kind)]

    def archived_records(self) -> Counter:
        """job id -> how many "archived" events, and how many "archived" job records in
        the audit chain."""
        events = Counter(e.job_id for e in self.events("archived"))
        audit = Counter()
        for row in self.led.audit_rows():
            rec = json.loads(row.line)
            if rec.get("kind") == "job" and rec.get("message") == "archived":
                audit[rec.get("job_id")] += 1
        return events, audit


def artifact_gets(emu) -> Counter:
    """(job or project URL, artifact path) -> successful GETs of that artifact."""
    return Counter((r.path, r.query.get("path")) for r in emu.requests.snapshot()
                   if r.method == "GET" and r.route in ARTIFACT_ROUTES and r.status == 200)


def gets_of(emu, name: str) -> int:
    return sum(n for (_, path), n in artifact_gets(emu).items() if path == name)


def partial_files(root: Path, name: str | None = None) -> list[Path]:
    """Temporary files below ``root`` (only those of objects called ``name``)."""
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if TEMP.search(p.name)
            and (name is None or p.name.startswith(f".{name}.%%"))]


def stored_files(root: Path, name: str) -> list[Path]:
    return [p for p in root.rglob(name) if p.is_file()] if root.exists() else []


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid``, and their children (from /proc; psutil is not
    installed): a run's worker processes are children of its fork server, the run's
    child (archiver.workers.zygote), or the run's own children without one."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    children = [p for p, parent in parents.items() if parent == pid]
    return children + [p for p, parent in parents.items() if parent in children]


def process_state(pid: int) -> str:
    """The one-letter state of ``pid`` (T: stopped, Z: zombie), "" when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""
