"""The fork server ("zygote") of the worker processes: ``python -m archiver.workers.zygote``.

Starting ``python -m archiver worker`` costs ~0.6 s of CPU before it does anything, and
almost all of it is importing (archiver, pydantic, requests, urllib3, the plugins). The
supervisor (:mod:`.forkserver`) therefore starts this process once; it imports what a
worker imports, then forks one child per "spawn" request, and each child runs the same
``archiver worker`` command through the click CLI, as ``python -m archiver`` would. A
child pays only for what is its own: the config, the plugin manager, the ledger.

Protocol (one ``AF_UNIX``/``SOCK_SEQPACKET`` socket, fd ``--fd``; one JSON object per
message, so message boundaries need no framing):

* zygote → supervisor, once: ``{"op": "ready", "pid": ...}``;
* supervisor → zygote: ``{"op": "spawn", "argv": [...], "env": {...}, "cwd": ...}`` with
  the child's stdout and stderr fds attached; answer ``{"op": "started", "pid": ...}``
  with a pidfd of the child attached, or ``{"op": "error", "error": ...}``;
* zygote → supervisor, later: ``{"op": "exit", "pid": ..., "returncode": ..., "cpu": ...}``
  (``returncode`` as :class:`subprocess.Popen` has it: ``-N`` for signal N; ``cpu`` is the
  child's user + system seconds from ``wait4``).

Fork hazards, and why this is safe: the zygote imports modules only (no ledger, socket,
thread or logging handler of its own), and it refuses to serve (exits 3; the supervisor
then uses ``subprocess.Popen``) if an import started a thread. A child closes the control
socket and the other children's pidfds, gets its own session (``setsid``, as
``start_new_session=True``), its own stdin (/dev/null), stdout and stderr, the request's
environment and working directory, default signal handlers and a fresh ``random`` seed,
and leaves the zygote's serving loop before it runs the CLI. It ends as an interpreter
does (non-daemon threads joined, atexit handlers run, stdio flushed) but with
``os._exit``, skipping the teardown of every module (see :func:`run_child`).

The zygote ends when the supervisor's end of the socket closes (EOF: the supervisor
closed it or died), or when its parent changes (checked every second, in case the socket
leaked into another process); the children are in sessions of their own and go on, as
``Popen`` children would. Not ``PR_SET_PDEATHSIG``: it fires when the *thread* that
started the zygote exits, and the supervisor may start it from any thread. Linux only
(``pidfd_open``, ``SOCK_SEQPACKET``).
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import socket
import sys

#: The largest message accepted (argv + environment as JSON).
MAX_MESSAGE = 1 << 20
#: What ``archiver worker`` imports (the CLI imports most of it lazily, inside commands):
#: imported once here, shared copy-on-write by every child. A module missing from this
#: list costs each child its import, nothing else.
WARM = (
    "sqlite3", "json", "concurrent.futures", "hashlib", "ssl", "http.client",
    "urllib3", "requests", "pydantic", "yaml", "click", "pluggy",
    "archiver.cli", "archiver.commands", "archiver.config", "archiver.runtime",
    "archiver.plugins", "archiver.registry", "archiver.hookspecs", "archiver.errors",
    "archiver.model", "archiver.ledger", "archiver.ledger.sqlite", "archiver.ledger.factory",
    "archiver.executors", "archiver.jobwork", "archiver.fanout", "archiver.chain",
    "archiver.components", "archiver.leases", "archiver.recovery", "archiver.triage",
    "archiver.cancel", "archiver.tracked", "archiver.progress", "archiver.dispatch",
    "archiver.keys", "archiver.retry", "archiver.digests",
    "archiver.workers.main", "archiver.workers.pull",
)
#: Signals a child gets back at their default (SIGINT: Python's KeyboardInterrupt).
RESET = ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD")


def warm() -> list[str]:
    """Import :data:`WARM`, the built-in plugins and the entry-point plugins that this
    environment would load; the names that failed (a child then imports them itself and
    reports the error as ``python -m archiver`` would)."""
    failed = []
    names = list(WARM)
    try:
        from archiver.plugins import DEFAULT_PLUGINS, ENTRY_POINT_GROUP
        names += [module for _, module in DEFAULT_PLUGINS]
        if os.environ.get("ARCHIVER_LOAD_ENTRY_POINTS", "1") != "0":
            from importlib import metadata
            disabled = {n.strip() for n in
                        os.environ.get("ARCHIVER_DISABLE_PLUGINS", "").split(",")}
            names += [ep.module for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)
                      if ep.name not in disabled]
    except Exception:  # noqa: BLE001 - a warm-up only
        failed.append("archiver.plugins")
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - a plugin's import may even sys.exit
            failed.append(name)
    return failed


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading
        return threading.active_count()


def _send(sock: socket.socket, msg: dict, fds: list[int] = ()) -> None:
    data = json.dumps(msg).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


class Zygote:
    """The serving loop (see module doc); :meth:`serve` returns only in a child, with
    the request it is to run."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.parent = os.getppid()
        self.kids: dict[int, int] = {}  # pidfd -> pid
        self.poller = select.poll()     # poll, not epoll: no fd for a child to inherit
        self.poller.register(sock, select.POLLIN)

    def serve(self) -> dict | None:
        while True:
            events = self.poller.poll(1000)
            if os.getppid() != self.parent:
                return None  # the supervisor is gone (and the socket leaked somewhere)
            for fd, _ in events:
                if fd in self.kids:
                    self._reap(fd)
                    continue
                try:
                    data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 4)
                except (ConnectionError, OSError):
                    return None
                if not data:
                    return None  # EOF: the supervisor closed its end, or died
                request = self._request(data, fds)
                if request is not None:
                    return request  # in the child

    def _request(self, data: bytes, fds: list[int]) -> dict | None:
        try:
            msg = json.loads(data)
            argv = msg["argv"]
            if msg.get("op") != "spawn" or argv[1:3] != ["-m", "archiver"] or len(fds) != 2:
                raise ValueError("not a spawn of `python -m archiver ...` with 2 fds")
            ready_r, ready_w = os.pipe()
            pid = os.fork()
        except Exception as exc:  # noqa: BLE001 - answered; the supervisor uses Popen
            for fd in fds:
                os.close(fd)
            self._answer({"op": "error", "error": f"{type(exc).__name__}: {exc}"})
            return None
        if pid == 0:
            os.close(ready_r)
            self._become_child(msg, fds)
            os.close(ready_w)  # ready: what Popen's exec would have set up, is set up
            return msg
        for fd in (*fds, ready_w):
            os.close(fd)
        # Answer once the child has its session and stdio, as Popen returns after exec:
        # a signal to its process group, or its stdout, then reach the child's own.
        os.read(ready_r, 1)
        os.close(ready_r)
        pidfd = os.pidfd_open(pid)  # before any wait: the pid cannot be reused yet
        self.kids[pidfd] = pid
        self.poller.register(pidfd, select.POLLIN)
        self._answer({"op": "started", "pid": pid}, [pidfd])
        return None

    def _answer(self, msg: dict, fds: list[int] = ()) -> None:
        try:
            _send(self.sock, msg, fds)
        except OSError:
            sys.exit(0)  # the supervisor is gone

    def _reap(self, pidfd: int) -> None:
        pid = self.kids.pop(pidfd)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        _, status, usage = os.wait4(pid, 0)
        self._answer({"op": "exit", "pid": pid,
                      "returncode": os.waitstatus_to_exitcode(status),
                      "cpu": usage.ru_utime + usage.ru_stime,
                      "maxrss_kib": usage.ru_maxrss})  # Linux: KiB

    def _become_child(self, msg: dict, fds: list[int]) -> None:
        """In the child: drop everything of the zygote's, take the request's stdio,
        environment, directory; what ``Popen(start_new_session=True)`` gives."""
        try:
            os.setsid()
            self.sock.close()
            for pidfd in self.kids:
                os.close(pidfd)
            self.kids.clear()
            self.poller = None
            null = os.open(os.devnull, os.O_RDONLY)
            for src, dst in ((null, 0), (fds[0], 1), (fds[1], 2)):
                os.dup2(src, dst)
            for fd in {null, *fds} - {0, 1, 2}:
                os.close(fd)
            for name in RESET:
                signal.signal(getattr(signal, name), signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            os.environ.clear()
            os.environ.update(msg.get("env") or {})
            if msg.get("cwd"):
                os.chdir(msg["cwd"])
            import random
            random.seed()  # also done by random's at-fork hook: explicit, it matters
            _set_name(b"archiver-worker")
        except BaseException as exc:  # noqa: BLE001 - never run the zygote's loop twice
            os.write(2, f"archiver zygote: preparing a child failed: {exc!r}\n".encode())
            os._exit(70)


def _set_name(name: bytes) -> None:
    """The process name ``ps -o comm`` and ``top`` show (the command line stays the
    zygote's: ``python -m archiver.workers.zygote``)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)  # PR_SET_NAME
    except Exception:  # noqa: BLE001 - cosmetic
        pass


def run_child(msg: dict) -> None:
    """The child's body: ``python -m archiver ARGS`` (``archiver/__main__.py``), then the
    interpreter's exit less its teardown of every module and object: that teardown
    writes to nearly every page shared with the zygote (reference counts), and copying
    them costs more CPU than the rest of a child's start-up."""
    import archiver
    args = list(msg["argv"][3:])
    sys.argv = [os.path.join(os.path.dirname(archiver.__file__), "__main__.py"), *args]
    sys.orig_argv = list(msg["argv"])
    from archiver.cli import main as cli_main
    try:
        cli_main(args)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 - as the interpreter reports it
        import traceback
        traceback.print_exc()
        code = 1
    os._exit(_finish(code))


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finish(code: int) -> int:
    """What ``Py_Finalize`` does that matters: join the non-daemon threads, run the atexit
    handlers (logging's flush among them), flush stdout and stderr."""
    import atexit
    import threading
    shutdown = getattr(threading, "_shutdown", None)  # CPython's own exit step
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            if stream is sys.stdout and code == 0:
                code = 120  # as the interpreter does when stdout cannot be flushed
    if code < 0:  # KeyboardInterrupt: die of the signal, as the interpreter does
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["--fd"] or len(argv) not in (2, 4):
        print("usage: python -m archiver.workers.zygote --fd FD [--serve worker] (started "
              "by the supervisor of worker processes)", file=sys.stderr)
        return 2
    sock = socket.socket(fileno=int(argv[1]))
    failed = warm()
    if _threads() != 1:  # forking a threaded process: refuse, the supervisor uses Popen
        print("archiver zygote: an import started a thread; not serving", file=sys.stderr)
        return 3
    _set_name(b"archiver-zygote")
    # Everything imported so far lives as long as the process: out of the collector's
    # reach, a child's garbage collections do not write to (and copy) the shared pages.
    gc.freeze()
    try:
        _send(sock, {"op": "ready", "pid": os.getpid(), "failed": failed})
    except OSError:
        return 0
    request = Zygote(sock).serve()
    if request is None:
        return 0
    run_child(request)  # a child: never returns
    return 70


if __name__ == "__main__":
    sys.exit(main())
