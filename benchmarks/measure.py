"""Running and measuring one subprocess: wall time, peak RSS and CPU from the OS.

Every measured command runs under GNU time (``/usr/bin/time -f %M``), whose report is the
kernel's ``ru_maxrss`` of the command *and every descendant it waited for*: the peak
resident set of the largest single process of the run (for a shell pipeline, the largest
of curl, tee, sha256sum...). Nothing is estimated.

Why the intermediate: Linux charges a child, at ``exec``, with the peak RSS of the memory
it was forked from, so ``wait4`` on a child of this runner (which holds the emulator and
its artifacts) would report at least the runner's own size. GNU time is a tiny process:
what it forks carries ~2 MiB. (``getrusage(RUSAGE_CHILDREN)`` has the same flaw and also
keeps the maximum over all children ever reaped.) CPU time (user + system of the whole
process tree) comes from ``wait4`` on the time process; it is not inherited.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MiB = 1 << 20
GiB = 1 << 30


class BenchError(RuntimeError):
    """A measured command failed or produced wrong output: the scenario is reported failed."""


@dataclass
class Measurement:
    """One run of one variant."""

    seconds: float
    rss_kib: int | None = None       # peak RSS of the largest process (KiB, GNU time %M)
    cpu_seconds: float | None = None  # user + system time of the whole process tree
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Proc:
    measurement: Measurement
    returncode: int
    stdout: str
    stderr: str


def with_parent(argv: list[str]) -> list[str]:
    """``argv`` that gets SIGTERM if the runner dies (util-linux ``setpriv``; a
    ``preexec_fn`` is unsafe here: the emulator's threads run in this process)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the group of the child we started, by its id
    except (ProcessLookupError, PermissionError):
        pass


GNU_TIME = "/usr/bin/time"


def require_gnu_time() -> None:
    if not os.access(GNU_TIME, os.X_OK):
        raise BenchError(f"{GNU_TIME} (GNU time) is needed to read each run's peak RSS: "
                         "apt-get install time")


class TreeSampler:
    """Peak RSS of every single process below one pid, for runs with worker processes.

    GNU time's ``%M`` is the largest ``ru_maxrss`` of the whole tree: one number. With
    ``archiver run --workers N`` the question is which process that was (the supervisor or
    one worker) and what the others reached, so this thread scans ``/proc`` every
    ``interval`` seconds for the descendants of ``root`` and keeps, per pid, the largest
    ``VmHWM`` seen (the kernel's high-water mark of that process's own memory, not
    inherited across ``exec``) and its command line. A process that lives less than one
    interval may be missed, and growth in its last interval is not seen: GNU time's
    number stays the measurement, this only tells the processes apart."""

    def __init__(self, root: int, interval: float = 0.2):
        self.root, self.interval = root, interval
        self.peaks: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rss-sampler",
                                        daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(5)
        return sorted(self.peaks.values(), key=lambda p: p["started"])

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        parent: dict[int, int] = {}
        start: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parent[int(name)] = int(fields[1])
            start[int(name)] = int(fields[19])
        tree, todo = set(), [self.root]
        children: dict[int, list[int]] = {}
        for pid, ppid in parent.items():
            children.setdefault(ppid, []).append(pid)
        while todo:
            pid = todo.pop()
            for child in children.get(pid, ()):
                if child not in tree:
                    tree.add(child)
                    todo.append(child)
        for pid in tree:
            try:
                with open(f"/proc/{pid}/status") as f:
                    hwm = next((int(line.split()[1]) for line in f
                                if line.startswith("VmHWM:")), None)
            except (OSError, ValueError):
                continue
            if hwm is None:   # a zombie: its memory is gone
                continue
            peak = self.peaks.get(pid)
            if peak is None or peak["started"] != start[pid]:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                except OSError:
                    continue
                peak = self.peaks[pid] = {"pid": pid, "cmd": cmd, "hwm_kib": 0,
                                          "started": start[pid]}
            peak["hwm_kib"] = max(peak["hwm_kib"], hwm)


def run_process(cmd: Sequence[str] | str, *, what: str, timeout: float, env=None, cwd=None,
                check: bool = True, per_process_rss: bool = False,
                rss_interval: float = 0.2) -> Proc:
    """Run ``cmd`` (a shell string runs under ``bash -o pipefail -c``) under GNU time and
    coreutils ``timeout`` (which kills it after ``timeout`` seconds even if this runner
    dies), in a session of its own. Wall time is measured from just before the fork to the
    moment ``wait4`` returns. ``per_process_rss``: also sample every process of the tree
    (:class:`TreeSampler`) into ``extra["processes"]``."""
    require_gnu_time()
    argv = ["bash", "-o", "pipefail", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(mode="r", prefix="bench-rss-") as rss_file:
        argv = [GNU_TIME, "-q", "-f", "%M", "-o", rss_file.name, "--",
                "timeout", "-k", "5", f"{timeout:.0f}", *argv]
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                             cwd=cwd, start_new_session=True)
        # backstop only: `timeout` ends the command itself
        timer = threading.Timer(timeout + 15, _kill_group, (p.pid,))
        timer.daemon = True
        timer.start()
        sampler = TreeSampler(p.pid, rss_interval).start() if per_process_rss else None
        try:
            _, status, ru = os.wait4(p.pid, 0)
            seconds = time.perf_counter() - t0
        except BaseException:
            _kill_group(p.pid)
            p.wait()
            raise
        finally:
            timer.cancel()
            processes = sampler.stop() if sampler is not None else None
        p.returncode = rc = os.waitstatus_to_exitcode(status)
        _kill_group(p.pid)  # a daemon the command left behind must not outlive it
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        rss_text = rss_file.read().split()
    timed_out = rc in (124, 137) or (rc == -signal.SIGKILL and seconds >= timeout)
    rss = int(rss_text[-1]) if rss_text and rss_text[-1].isdigit() else None
    m = Measurement(seconds, rss, ru.ru_utime + ru.ru_stime)
    if processes is not None:
        m.extra["processes"] = processes
    proc = Proc(m, rc, stdout, stderr)
    if check and rc != 0:
        why = f"timed out after {timeout:.0f} s" if timed_out else f"exit code {rc}"
        tail = (stderr.strip() or stdout.strip())[-1500:]
        raise BenchError(f"{what}: {why}\n{tail}")
    return proc


def settle() -> None:
    """Between two measured runs: flush dirty pages so one run's writeback does not
    slow the next one down."""
    os.sync()


def loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def _first_line(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (r.stdout or r.stderr).strip()
    return text.splitlines()[0] if text else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total() -> str:
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        return f"{kib / (1 << 20):.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "?"


def _git(root: str) -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=False,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, check=False, capture_output=True, text=True,
                               timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head}{' (with uncommitted changes)' if dirty.strip() else ''}" if head else "?"


def machine_info(root: str) -> dict[str, str]:
    """What the absolute numbers depend on."""
    import sys

    tools = {"curl": ["curl", "--version"], "sha256sum": ["sha256sum", "--version"],
             "gzip": ["gzip", "--version"], "zstd": ["zstd", "--version"],
             "rclone": ["rclone", "version"]}
    info = {
        "cpu": f"{_cpu_model()}, {os.cpu_count()} logical CPUs",
        "memory": _mem_total(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "archiver commit": _git(root),
    }
    for name, argv in tools.items():
        line = (_first_line(argv) or "not installed").strip("* ")
        info[name] = " ".join(line.split()[:4]) if name == "curl" else line
    return info
