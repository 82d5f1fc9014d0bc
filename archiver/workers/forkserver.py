"""The supervisor's end of the fork server (:mod:`.zygote`): start it once, ask it for
children, and hand each child back as a :class:`ForkedProcess`, which behaves like the
``subprocess.Popen`` it replaces (``pid``, ``stdout``, ``poll``, ``wait``,
``send_signal``, ``returncode``).

Why: a worker started with ``Popen`` pays ~0.6 s of CPU for the interpreter and its
imports; forked from the zygote, which did that once, it pays only for its own config,
plugin manager and ledger (docs/architecture.md, "Worker processes").

Robustness: if the zygote cannot start (or is disabled, ``ARCHIVER_FORK_SERVER=0``) or
dies, :meth:`ForkServer.spawn` returns None and the supervisor uses ``Popen`` as before.
A child whose zygote died is still watched through its pidfd (signals and the end of the
process); its exit status is then unknown and reported as :data:`UNKNOWN_EXIT`. A child
whose environment differs from the zygote's in what the interpreter reads at start-up
(``PYTHON*``, the locale) is started with ``Popen`` too: a fork cannot redo that.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time

log = logging.getLogger("archiver.workers.forkserver")

ENV_SWITCH = "ARCHIVER_FORK_SERVER"  # "0": always Popen
READY_TIMEOUT = 60.0   # seconds for the zygote's imports (slow under load, never this slow)
REPLY_TIMEOUT = 10.0
MAX_REPLY = 1 << 16
#: The exit code of a child whose zygote died before it could report it (a death).
UNKNOWN_EXIT = 255
#: Environment read by the interpreter at start-up: a child needing other values than
#: the zygote's is started with Popen.
_INTERPRETER_ENV = ("LANG", "LC_ALL", "LC_CTYPE")


def _interpreter_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PYTHON") or k in _INTERPRETER_ENV}


def command(fd: int) -> list[str]:
    """How the zygote is started (a function, so that a test can make it fail). Its
    children keep this command line: ``--serve worker`` says what they are in ``ps``."""
    return [sys.executable, "-m", "archiver.workers.zygote", "--fd", str(fd),
            "--serve", "worker"]


class ForkedProcess:
    """One child of the zygote, as a ``Popen`` look-alike."""

    def __init__(self, args: list[str], pid: int, pidfd: int, stdout, server: ForkServer):
        self.args, self.pid, self.stdout = args, pid, stdout
        self.returncode: int | None = None
        self.cpu: float | None = None  # user + system seconds, once ended (from wait4)
        self.maxrss_kib: int | None = None  # peak RSS, once ended (from wait4)
        self._pidfd: int | None = pidfd
        self._server = server
        self._ended = threading.Event()
        self._lock = threading.Lock()

    def _exited(self, returncode: int, cpu: float | None = None,
                maxrss_kib: int | None = None) -> None:
        with self._lock:
            if self.returncode is None:
                self.returncode, self.cpu, self.maxrss_kib = returncode, cpu, maxrss_kib
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        self._ended.set()

    def poll(self) -> int | None:
        if self.returncode is None and self._server.dead:
            with self._lock:  # no zygote to report: did the process end?
                ended = (self._pidfd is not None
                         and select.select([self._pidfd], [], [], 0)[0])
            if ended:
                log.warning("worker pid %d ended; its exit status is unknown (the fork "
                            "server died)", self.pid)
                self._exited(UNKNOWN_EXIT)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._ended.wait(left)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        # by pidfd, not by pid: once the zygote has reaped the child, its pid may be reused
        with self._lock:
            if self.returncode is not None or self._pidfd is None:
                return
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The zygote process and a thread reading its messages (see module doc)."""

    def __init__(self) -> None:
        self.dead = False
        self.pid: int | None = None
        self.proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._children: dict[int, ForkedProcess] = {}
        self._replies: queue.Queue = queue.Queue()
        self._spawn_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._start_env: dict[str, str] = {}
        self._start_lock = threading.Lock()

    @staticmethod
    def enabled() -> bool:
        return (os.environ.get(ENV_SWITCH, "1") != "0" and sys.platform.startswith("linux")
                and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds"))

    def launch(self) -> None:
        """Start the zygote without waiting for it (its imports take ~0.6 s of CPU: the
        caller may have other things to do meanwhile)."""
        with self._start_lock:
            if self.proc is not None or self.dead:
                return
            theirs = None
            try:
                self._start_env = dict(os.environ)
                self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                self.proc = subprocess.Popen(
                    command(theirs.fileno()), pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    start_new_session=True, env=self._start_env)
            except (OSError, subprocess.SubprocessError) as exc:
                self._failed(exc)
            finally:
                if theirs is not None:
                    theirs.close()

    def start(self) -> bool:
        """Launch the zygote if need be and wait until it is ready; False (logged once)
        if it could not start or has died since."""
        self.launch()
        with self._start_lock:
            if self.dead or self._reader is not None:
                return not self.dead
            try:
                self._sock.settimeout(READY_TIMEOUT)
                data = self._sock.recv(MAX_REPLY)
                if not data:
                    raise OSError(f"it exited with {self.proc.wait(5)} before it was ready")
                ready = json.loads(data)
                if ready.get("op") != "ready":
                    raise OSError(f"unexpected first message {ready!r}")
                self._sock.settimeout(None)
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                self._failed(exc)
                return False
            self._started(ready)
            return True

    def _failed(self, exc: BaseException) -> None:
        log.info("no fork server for the worker processes (%s); starting them with "
                 "subprocess.Popen", exc)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.dead = True
        if self.proc is not None:
            self.proc.kill()  # it may be alive but useless (say, stuck in an import)
            self.proc.wait(5)

    def _started(self, ready: dict) -> None:
        self.pid = ready["pid"]
        if ready.get("failed"):
            log.debug("fork server: not preloaded: %s", ", ".join(ready["failed"]))
        self._reader = threading.Thread(target=self._read, name="archiver-forkserver",
                                        daemon=True)
        self._reader.start()
        log.debug("fork server started (pid %d)", self.pid)

    def spawn(self, argv: list[str], env: dict[str, str]) -> ForkedProcess | None:
        """A child running ``argv`` (``python -m archiver ...``) with ``env``, its stdout
        a pipe to us; None when the fork server cannot (the caller uses Popen)."""
        if self.dead or self._sock is None:
            return None
        if _interpreter_env(env) != _interpreter_env(self._start_env):
            log.debug("worker environment differs in PYTHON*/locale: Popen")
            return None
        r, w = os.pipe()
        try:
            with self._spawn_lock:
                msg = json.dumps({"op": "spawn", "argv": argv, "env": env,
                                  "cwd": os.getcwd()}).encode()
                # stderr: our fd 2, as a Popen child inherits it
                socket.send_fds(self._sock, [msg], [w, 2])
                reply = self._replies.get(timeout=REPLY_TIMEOUT)
        except (OSError, queue.Empty, ValueError) as exc:
            os.close(r)
            os.close(w)
            self._lost(f"spawn failed: {exc}")
            return None
        os.close(w)
        if reply is None or reply[0].get("op") != "started":
            os.close(r)
            if reply is not None:
                log.info("fork server refused a worker (%s); using Popen",
                         reply[0].get("error"))
            return None
        child = reply[1]
        child.args, child.stdout = argv, os.fdopen(r, "rb")
        return child

    def _read(self) -> None:
        sock = self._sock
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, MAX_REPLY, 2)
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                self._lost("it exited")
                return
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            op = msg.get("op")
            if op == "started" and fds:
                child = ForkedProcess([], msg["pid"], fds[0], None, self)
                self._children[child.pid] = child
                self._replies.put((msg, child))
            elif op == "exit":
                child = self._children.pop(msg.get("pid"), None)
                if child is not None:
                    child._exited(int(msg["returncode"]), msg.get("cpu"),
                                  msg.get("maxrss_kib"))
            else:
                for fd in fds:
                    os.close(fd)
                self._replies.put((msg, None))

    def _lost(self, why: str) -> None:
        if not self.dead:
            self.dead = True
            if self._sock is not None:  # not close(): the reader may be in recv on it
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            log.info("fork server gone (%s): further workers start with Popen", why)
        self._replies.put(None)

    def close(self, timeout: float = 5.0) -> None:
        """Close our end (the zygote exits on EOF) and reap the zygote, so that its CPU
        time and its children's count in ours (``getrusage(RUSAGE_CHILDREN)``). One that
        never became ready is killed: nobody will use its imports."""
        if self.proc is not None and self._reader is None and not self.dead:
            self.proc.kill()
        self.dead = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._reader is not None:
            self._reader.join(timeout)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._stop_proc(timeout)

    def _stop_proc(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
