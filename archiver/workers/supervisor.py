"""The supervisor of local worker processes (``workers: N``, ``--workers N``).

It starts N real child processes (``python -m archiver worker -c FILE --jsonl``), each in
its own session so that a terminal's Ctrl-C reaches the supervisor only, forked from one
fork server (:mod:`.forkserver`, :mod:`.zygote`: the interpreter and its imports are paid
once, not once per child) or, when there is none, with ``subprocess.Popen``, and:

* reads each child's stdout, one JSON object per line (hello, progress, outcome), and
  hands the events to its owner, which merges them into one progress display, one
  report and one exit code;
* notices a child that died (``kill -9``, ``os._exit`` in a plugin, OOM): its leases are
  expired at once in the ledger (the pid is gone, so there is nothing to wait for; each
  counts as a lost lease, which is how poison jobs get parked) and its writers' leftovers
  are discarded, then a new child is started while work remains;
* forwards SIGTERM/SIGINT: the first is the graceful drain (children finish the objects
  in flight, start nothing new), the second aborts at once; children still running
  ``grace + KILL_MARGIN`` seconds after the first signal, or ``ABORT_KILL_AFTER`` seconds
  after an abort, are killed. A child's abort cuts its sockets (archiver.cancel), so it
  exits within a second or two whatever the network does: the kill is for a child that
  is wedged otherwise, and its leftovers are recorded for cleanup.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from ..progress import ENV as PROGRESS_ENV
from .forkserver import ForkedProcess, ForkServer

log = logging.getLogger("archiver.workers.supervisor")

RESPAWN_MAX_DELAY = 30.0
#: Seconds after the grace period before a child still running is killed (a child aborts
#: at the end of its grace and exits within ~2 s: this is headroom, not a wait).
KILL_MARGIN = 10.0
#: Seconds after an abort (second signal) before a child still running is killed.
ABORT_KILL_AFTER = 5.0


@dataclass
class Child:
    index: int
    proc: Union[subprocess.Popen, ForkedProcess]
    started: float
    worker_id: str | None = None
    reader: threading.Thread | None = None
    lines: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Supervisor:
    """N worker processes of one config file (see module doc)."""

    config_file: str
    n: int
    on_event: Callable[[dict[str, Any], Child], None]
    on_death: Callable[[Child, int], None] = lambda child, rc: None
    worker_args: list[str] = field(default_factory=list)
    verbosity: int = 0
    #: False: nobody shows the children's progress, so they send none (ARCHIVER_PROGRESS=0:
    #: no JSON line per object and job to write, read and parse)
    progress: bool = True
    children: dict[int, Child] = field(default_factory=dict)
    stopping: bool = False
    deaths: int = 0
    _stopped_at: float | None = None
    _aborted_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: False: always Popen; None: not started yet (started with the first child)
    fork_server: ForkServer | bool | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "archiver"]
        if self.verbosity:
            cmd.append("-" + "v" * self.verbosity)
        return [*cmd, "worker", "-c", self.config_file, "--jsonl", *self.worker_args]

    def _forks(self) -> ForkServer | None:
        """The fork server, started with the first child (or launched earlier by the
        caller); None: Popen."""
        if self.fork_server is None:
            self.fork_server = ForkServer() if ForkServer.enabled() else False
        if self.fork_server and self.fork_server.start():
            return self.fork_server
        return None

    def spawn(self, index: int) -> Child:
        cmd, env = self.command(), {**os.environ, "ARCHIVER_WORKER_INDEX": str(index)}
        if not self.progress:
            env[PROGRESS_ENV] = "0"
        forks = self._forks()
        proc = forks.spawn(cmd, env) if forks is not None else None
        if proc is None:  # no fork server (or it died): as before
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
        child = Child(index, proc, time.monotonic())
        child.reader = threading.Thread(target=self._read, args=(child,),
                                        name=f"archiver-worker-{index}-out", daemon=True)
        child.reader.start()
        with self._lock:
            self.children[index] = child
        log.info("worker %d started (pid %d)", index, proc.pid)
        return child

    def start(self, count: int | None = None) -> None:
        for i in range(count if count is not None else self.n):
            self.spawn(i)

    def _read(self, child: Child) -> None:
        assert child.proc.stdout is not None
        for raw in child.proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                log.info("worker %d: %s", child.index, line[:500])
                continue
            if not isinstance(event, dict):
                continue
            child.lines += 1
            if event.get("type") == "hello":
                child.worker_id = event.get("worker_id")
            try:
                self.on_event(event, child)
            except Exception:  # a bad event must not kill the reader
                log.exception("worker %d: handling an event failed", child.index)

    # ------------------------------------------------------------------ life and death
    def reap(self) -> list[tuple[Child, int]]:
        """Children that ended since the last call, with their exit codes (their output
        is fully read first)."""
        ended = []
        with self._lock:
            for index, child in list(self.children.items()):
                rc = child.proc.poll()
                if rc is None:
                    continue
                del self.children[index]
                ended.append((child, rc))
        for child, rc in ended:
            if child.reader is not None:
                child.reader.join(timeout=10)
            if rc != 0:
                self.deaths += 1
                log.warning("worker %d (pid %d) died with %s", child.index, child.pid,
                            _describe(rc))
                self.on_death(child, rc)
        return ended

    @property
    def alive(self) -> int:
        with self._lock:
            return len(self.children)

    def signal_all(self, signum: int) -> None:
        with self._lock:
            children = list(self.children.values())
        for child in children:
            try:
                child.proc.send_signal(signum)
            except ProcessLookupError:
                pass

    def stop(self, *, now: bool = False) -> None:
        """First call: graceful drain; second (or ``now``): abort at once."""
        first = not self.stopping
        self.stopping = True
        if first:
            self._stopped_at = time.monotonic()
        if (now or not first) and self._aborted_at is None:
            self._aborted_at = time.monotonic()
        self.signal_all(signal.SIGTERM)
        if now and first:
            self.signal_all(signal.SIGTERM)

    def overdue(self, grace: float) -> bool:
        """``grace + KILL_MARGIN`` s since the stop began, or ``ABORT_KILL_AFTER`` s
        since the abort."""
        now = time.monotonic()
        return ((self._stopped_at is not None
                 and now - self._stopped_at > grace + KILL_MARGIN)
                or (self._aborted_at is not None and now - self._aborted_at > ABORT_KILL_AFTER))

    def kill_overdue(self, grace: float) -> None:
        """SIGKILL the children still running once :meth:`overdue`."""
        if self.overdue(grace):
            self.signal_all(signal.SIGKILL)

    def wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.alive and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        self.reap()

    def close(self) -> None:
        """End the fork server (after :meth:`wait_all`): children still running go on
        in their own sessions, as Popen children would."""
        if isinstance(self.fork_server, ForkServer):
            self.fork_server.close()


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


def respawn_delay(deaths_in_a_row: int) -> float:
    """Back off from a crash loop: 0 s, 1 s, 2 s, 4 s ... at most 30 s."""
    if deaths_in_a_row <= 1:
        return 0.0
    return min(RESPAWN_MAX_DELAY, 2.0 ** (deaths_in_a_row - 2))
