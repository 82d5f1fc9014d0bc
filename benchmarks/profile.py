"""Where archiver's CPU per artifact goes on scenario 3's shape, and what the leases cost.

``python -m benchmarks.profile [--jobs 50] [--per-job 20] [--latency 0.02] [--workers 1]``

1. runs ``archiver run`` once unprofiled (its CPU, from the kernel, is the total to share
   out), then once under py-spy (``py-spy record --format raw``, every thread, on-CPU
   samples only; with ``--workers N`` also the worker processes), and shares that CPU out
   over categories (claim, heartbeat, fenced finish, other ledger writes, HTTP, sink
   writes and fsync, hashing, BagIt, start-up, ...) by the frames of each sample; frames
   of archiver's own files are resolved to qualified names (``SQLiteClaims.claim_next.
   <locals>.work``) so that ledger work run on the group-commit thread is still charged
   to the call that queued it;
2. times the lease calls alone on a scratch ledger (``--ledger-jobs`` jobs): the claim,
   the fenced finish and one heartbeat per job, against the unfenced ``record_job`` that
   a job's final record was before leases existed.

py-spy (``pip install py-spy``) is needed for 1; 2 needs nothing. Nothing here is part of
``python -m benchmarks``: profiling perturbs what it measures.
"""

from __future__ import annotations

import argparse
import ast
import collections
import os
import re
import shutil
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from .context import Context, archiver_config, run_archiver, write_config
from .measure import run_process
from .runner import ROOT, _env
from .servers import emulator

# (category, test on the (file, qualified name) frames of one sample, root first).
# The first category that matches wins; the order goes from the specific to the general.
Frame = tuple[str, str]


def _has(frames: list[Frame], *, file: str = "", name: str = "") -> bool:
    return any(file in f and re.search(name, q) for f, q in frames)


CATEGORIES = [
    ("start-up and shutdown (imports, config, plugins, runtime open/close)",
     lambda fr: _has(fr, name=r"^_find_and_load") or _has(
         fr, file="archiver/", name=r"open_runtime|Runtime\.open|load_config|Runtime\.close"
                                    r"|build_plugin_manager|preflight|recover_dead_writers")),
    ("claim (Heartbeat.claim / claim_next and its ledger transaction work)",
     lambda fr: _has(fr, file="archiver/", name=r"(^|\.)claim(_next)?(\.|$)|_take|"
                                                r"_upsert_queued|_lease_state|"
                                                r"_expire_dead_holders")),
    ("heartbeat (register, beats, unregister)",
     lambda fr: _has(fr, file="archiver/", name=r"Heartbeat\.(start|close|beat|_loop)|"
                                                r"register_worker|heartbeat")),
    ("fenced finish (JobLease.finish / finish_job) and the job's archived event",
     lambda fr: _has(fr, file="archiver/", name=r"JobLease\.finish|finish_job|"
                                                r"_archive\.<locals>|ledger\.event")),
    ("BagIt tag files (write, fsync, record)",
     lambda fr: _has(fr, file="archiver/compliance/")),
    ("job.json / result.json (read_result, items)",
     lambda fr: _has(fr, file="archiver/", name=r"read_result|Runtime\.items|"
                                                r"iter_jobs|list_jobs")),
    ("ledger: copies, artifacts, pending tokens, events (+ audit chain)",
     lambda fr: _has(fr, file="archiver/ledger/") and not _has(
         fr, file="archiver/ledger/groupcommit", name=r"_commit$")
     or _has(fr, file="archiver/ledger/sqlite", name=r"_tx|record_|pending|event")),
    ("ledger: BEGIN IMMEDIATE / COMMIT (group commit)",
     lambda fr: _has(fr, file="archiver/ledger/")),
    ("HTTP GET of the artifact (requests, urllib3, http.client)",
     lambda fr: _has(fr, file="requests/") or _has(fr, file="urllib3/")
     or _has(fr, file="http/client")),
    ("sink write: temporary file, write, fsync, link, directory fsync",
     lambda fr: _has(fr, file="archiver/", name=r"[Ss]ink|[Ww]riter|fsync|commit")),
    ("digests / transforms (sha256 ...)",
     lambda fr: _has(fr, file="archiver/digests") or _has(fr, file="archiver/chain")
     or _has(fr, name=r"hashlib|sha256")),
    ("progress events, hooks (pluggy), logging",
     lambda fr: _has(fr, file="pluggy/") or _has(fr, file="logging/")
     or _has(fr, file="archiver/", name=r"on_progress|hook_|emit|_Events")),
    ("store_item / fanout bookkeeping (archiver, other)",
     lambda fr: _has(fr, file="archiver/")),
    ("thread pools, futures, queues (stdlib threading)",
     lambda fr: _has(fr, file="concurrent/futures") or _has(fr, file="threading.py")
     or _has(fr, file="queue.py")),
]
OTHER = "other"

LINE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?):(?P<line>\d+)\)$")


@lru_cache(maxsize=None)
def _scopes(path: str) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every function in one source file."""
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return []
    out: list[tuple[int, int, str]] = []

    def walk(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                q = f"{prefix}{child.name}"
                out.append((child.lineno, child.end_lineno or child.lineno, q))
                walk(child, f"{q}.<locals>.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return out


def qualify(func: str, file: str, line: int) -> str:
    """The qualified name of the innermost function of ``file`` around ``line`` (archiver
    files only; others keep py-spy's name)."""
    if "archiver/" not in file:
        return func
    path = ROOT / file[file.index("archiver/"):]
    if not path.exists():
        return func
    best = None
    for first, last, q in _scopes(str(path)):
        if first <= line <= last and (best is None or first >= best[0]):
            best = (first, q)
    return best[1] if best else func


def parse_raw(text: str) -> collections.Counter:
    """py-spy's raw (collapsed) output: ``frame;frame;... count``, root first."""
    stacks: collections.Counter = collections.Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            m = LINE.match(part.strip())
            if m:
                frames.append((m["file"], qualify(m["func"], m["file"], int(m["line"]))))
            else:
                frames.append(("", part.strip()))
        stacks[tuple(frames)] += int(count)
    return stacks


def categorise(stacks: collections.Counter) -> collections.Counter:
    out: collections.Counter = collections.Counter()
    for frames, n in stacks.items():
        fr = list(frames)
        out[next((name for name, test in CATEGORIES if test(fr)), OTHER)] += n
    return out


def leaves(stacks: collections.Counter, top: int = 15) -> list[tuple[str, int]]:
    out: collections.Counter = collections.Counter()
    for frames, n in stacks.items():
        f, q = frames[-1]
        out[f"{q} ({f})"] += n
    return out.most_common(top)


def inclusive(stacks: collections.Counter, top: int = 25) -> list[tuple[str, int]]:
    out: collections.Counter = collections.Counter()
    for frames, n in stacks.items():
        for f, q in set(frames):
            if "archiver/" in f:
                out[q] += n
    return out.most_common(top)


def ledger_costs(jobs: int, per_job: int) -> list[tuple[str, float]]:
    """CPU ms per job of the lease calls alone, on a scratch SQLite ledger (process CPU
    time: the group-commit thread included), with ``per_job`` artifacts recorded per job
    so that the tables have their real size."""
    from archiver.leases import Heartbeat
    from archiver.ledger import new_worker_id
    from archiver.ledger.sqlite import SQLiteLedger
    from archiver.model import Job

    class LeaseCfg:
        ttl, heartbeat, effective_self_fence, max_lost = 60.0, 20.0, 45.0, 3

    tmp = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    try:
        def fresh(name: str):
            return SQLiteLedger(tmp / f"{name}.sqlite")

        def job(i: int) -> Job:
            return Job(f"job_{i:05d}", "proj_small", "completed",
                       {"id": f"job_{i:05d}", "projectId": "proj_small",
                        "status": "completed", "expiresAt": "2031-01-01T00:00:00Z"})

        def timed(fn) -> float:
            t0 = time.process_time()
            fn()
            return (time.process_time() - t0) / jobs * 1000

        out = []
        # before leases: the final record was record_job(ARCHIVED) (+ the archived event)
        led = fresh("old")
        out.append(("record_job(archived) + event, unfenced (before leases)", timed(
            lambda: [(led.record_job(job(i), "archived"),
                      led.event("archived", "x", job_id=job(i).id)) for i in range(jobs)])))
        led.close()

        led = fresh("new")
        hb = Heartbeat(led, new_worker_id(), LeaseCfg)
        t0 = time.process_time()
        hb.start()
        start_ms = (time.process_time() - t0) * 1000
        hb._stop.set()  # no background beats: they are timed one by one below
        leases = []
        out.append(("claim (run, workers 1: Heartbeat.claim → ledger.claim)", timed(
            lambda: leases.extend(hb.claim(job(i)) for i in range(jobs)))))
        out.append(("one heartbeat (extends every lease held; here all jobs)",
                    timed(lambda: hb.beat()) * jobs))

        def finish():
            for i, lease in enumerate(leases):
                with led.batch():
                    lease.finish(job(i), "archived")
                    led.event("archived", "x", job_id=job(i).id)
        out.append(("fenced finish + event (JobLease.finish in one batch)", timed(finish)))
        t0 = time.process_time()
        hb.close()
        out.append(("register + unregister the worker (once per process, ms)",
                    start_ms + (time.process_time() - t0) * 1000))
        led.close()

        led = fresh("queue")
        led.enqueue([job(i) for i in range(jobs)])
        hb = Heartbeat(led, new_worker_id(), LeaseCfg).start()
        hb._stop.set()
        got = []
        out.append((f"claim_next on a queue of {jobs} (workers > 1; enqueue not counted)",
                    timed(lambda: got.extend(hb.claim_next(ignore_backoff=True)
                                             for _ in range(jobs)))))
        hb.close()
        led.close()

        # per artifact, for scale: what store_item writes (pending token before the first
        # byte, then one batch: pending gone, copy row, "stored" event, artifact row)
        from archiver.model import StoredObject
        led = fresh("artifacts")
        digests = {"sha256": "0" * 64}

        def artifacts(with_event: bool):
            def go():
                for i in range(jobs):
                    path = f"pages/{i}/p.json"
                    pid = led.add_pending("local", f"/x/.{i}.partial", "job_x", path,
                                          owner="h:1:proc")
                    stored = StoredObject("local", f"k/{i}", 8192, digests, {}, f"/x/{i}")
                    with led.batch():
                        led.remove_pending(pid)
                        led.record_copy("job_x", path, stored, received=digests,
                                        chain=[], verified=True)
                        if with_event:
                            led.event("stored", stored.location, job_id="job_x", path=path,
                                      sink="local")
                        led.record_artifact("job_x", path, kind="artifact", key=f"k/{i}",
                                            filename=None, size=8192, received=digests,
                                            state="stored", error=None)
            return go
        out.append(("per ARTIFACT: add_pending + one batch (pending, copy, stored event, "
                    "artifact row)", timed(artifacts(True))))
        out.append(("per ARTIFACT: the same without the stored event",
                    timed(artifacts(False))))
        led.close()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SYSCALL_GROUPS = [
    ("fsync / fdatasync (sink files, directories, BagIt; the kernel writes the inode)",
     r"fsync|fdatasync|sync_file_range"),
    ("futex: thread wake-ups (locks, conditions, the GIL, group commit)", r"futex"),
    ("network: loopback TCP send/receive, poll", r"send|recv|poll|select|connect|accept|"
                                                 r"socket|epoll|shutdown|getsockopt"),
    ("file data: read / write / pwrite (sink files, SQLite WAL)", r"^(p?read|p?write)"),
    ("file metadata: open, close, stat, link, rename, unlink, mkdir",
     r"open|close|stat|link|rename|unlink|mkdir|access|readlink|getdents|lseek|fcntl"),
    ("memory: mmap, munmap, brk, madvise", r"mmap|munmap|brk|madvise|mprotect"),
    ("threads and processes: clone, exec, exit, wait", r"clone|exec|exit|wait|fork"),
]
SYSCALL = re.compile(r"(?:__x64_sys_|__do_sys_|__se_sys_|ksys_)(\w+?)(?:\+|$)")


def perf_categories(script: str) -> collections.Counter:
    """CPU samples of ``perf script`` (``perf record -e cpu-clock -g``) by where the CPU
    was: a syscall group (kernel), another kernel path, or a user-space library."""
    out: collections.Counter = collections.Counter()
    for block in script.split("\n\n"):
        lines = [ln.strip() for ln in block.strip().splitlines()]
        if len(lines) < 2:
            continue
        frames = lines[1:]
        kernel = [f for f in frames if "[kernel.kallsyms]" in f]
        if kernel:
            call = next((m.group(1) for f in kernel for m in [SYSCALL.search(f)] if m), None)
            if call is not None:
                group = next((g for g, rx in SYSCALL_GROUPS if re.search(rx, call)),
                             f"other syscalls ({call} ...)")
                out["kernel: " + group] += 1
            elif any("page_fault" in f for f in kernel):
                out["kernel: page faults"] += 1
            elif any("irq" in f for f in kernel):
                out["kernel: interrupts, softirq (incl. loopback packet delivery)"] += 1
            else:
                out["kernel: other (scheduler, timers ...)"] += 1
            continue
        dso = frames[0].rsplit("(", 1)[-1].rstrip(")")
        name = os.path.basename(dso)
        if "python" in name:
            out["user: the Python interpreter (libpython, bytecode)"] += 1
        elif "sqlite" in name:
            out["user: SQLite (libsqlite3)"] += 1
        elif "crypto" in name or "ssl" in name:
            out["user: OpenSSL (sha256 ...)"] += 1
        elif name.startswith("libc") or name.startswith("ld-linux"):
            out["user: libc (malloc, memcpy ...)"] += 1
        elif name.endswith(".so") or ".so." in name or "cpython" in name:
            out["user: C extension modules (_json, pydantic_core, yaml ...)"] += 1
        else:
            out["user: other / unknown (JIT-less Python frames, [unknown])"] += 1
    return out


def rusage_split(ctx: Context, config: Path) -> tuple[float, float]:
    """(user, system) CPU seconds of one ``archiver run`` and the processes it waited for."""
    import subprocess

    proc = subprocess.Popen([ctx.python, "-m", "archiver.cli", "run", "-c", str(config),
                             "--json"], env=ctx.env, stdout=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"archiver run exited {proc.returncode}")
    return ru.ru_utime, ru.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=50)
    p.add_argument("--per-job", type=int, default=20)
    p.add_argument("--latency", type=float, default=0.020)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=16,
                   help="in flight in total (divided among the workers)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--ledger-jobs", type=int, default=500)
    p.add_argument("--no-py-spy", action="store_true")
    p.add_argument("--no-perf", action="store_true",
                   help="skip the perf (user + kernel) profile")
    p.add_argument("--raw", type=Path, help="keep py-spy's raw output here (and perf's "
                                            "`perf script` text beside it, .perf.txt)")
    args = p.parse_args(argv)

    n = args.jobs * args.per_job
    print(f"lease calls alone, {args.ledger_jobs} jobs, CPU ms per job "
          f"(÷ {args.per_job} for per artifact):")
    for what, ms in ledger_costs(args.ledger_jobs, args.per_job):
        print(f"  {ms:8.3f}  {what}")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if args.no_py_spy or not os.access(spy, os.X_OK):
        print("py-spy not found (pip install py-spy): no profile")
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    ctx = Context(workdir=work, reps=1, env=_env())
    try:
        with emulator() as emu:
            from archiver.testing.emulator import ArtifactSpec

            for j in range(args.jobs):
                emu.add_job("proj_small", artifacts=[
                    ArtifactSpec(f"pages/{j}/p{i:03d}.json", size=8 << 10)
                    for i in range(args.per_job)])
            emu.faults.latency = args.latency

            def config(tag: str) -> Path:
                return write_config(work / f"{tag}.yaml", archiver_config(
                    emu, work / f"root-{tag}", work / f"state-{tag}",
                    concurrency=max(1, args.concurrency // args.workers),
                    workers=args.workers))

            plain = run_archiver(ctx, config("plain"), what="archiver", timeout=600,
                                 expect_archived=args.jobs)
            user, system = rusage_split(ctx, config("split"))
            raw = args.raw or work / "profile.raw"
            # --gil: only the thread holding the GIL is sampled (Python code, and C code
            # that keeps the GIL): what one process's threads spend CPU on, one at a time.
            # --nonblocking: the process is not stopped for each sample.
            cmd = [spy, "record", "-r", str(args.rate), "-f", "raw", "-o", str(raw),
                   "--gil", "--nonblocking",
                   *(["--subprocesses"] if args.workers > 1 else []), "--",
                   ctx.python, "-m", "archiver.cli", "run", "-c", str(config("spy")),
                   "--json"]
            spied = run_process(cmd, what="py-spy", timeout=900, env=ctx.env).measurement
            perf_text = None
            if not args.no_perf and shutil.which("perf"):
                data = work / "perf.data"
                run_process(["perf", "record", "-q", "-e", "cpu-clock", "-F", "997", "-g",
                             "-o", str(data), "--", ctx.python, "-m", "archiver.cli", "run",
                             "-c", str(config("perf")), "--json"], what="perf record",
                            timeout=900, env=ctx.env)
                perf_text = run_process(["perf", "script", "-i", str(data)],
                                        what="perf script", timeout=900, env=ctx.env).stdout
                if args.raw:
                    args.raw.with_suffix(".perf.txt").write_text(perf_text)
    finally:
        pass
    try:
        stacks = parse_raw(raw.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(stacks.values())
    cpu = plain.cpu_seconds or 0.0
    print(f"\narchiver run, {args.jobs} jobs × {args.per_job} artifacts, "
          f"{args.latency * 1000:.0f} ms latency, workers {args.workers}, concurrency "
          f"{max(1, args.concurrency // args.workers)} each: {plain.seconds:.2f} s, "
          f"{cpu:.2f} CPU s ({cpu / n * 1000:.2f} ms per artifact) unprofiled; profiled run "
          f"{spied.seconds:.2f} s, {total} on-CPU samples at {args.rate}/s "
          f"(= {total / args.rate:.2f} s of GIL-held time)")
    print(f"user/system split (another unprofiled run): {user:.2f} s user + {system:.2f} s "
          f"system = {(user + system) / n * 1000:.2f} ms per artifact "
          f"({system / (user + system):.0%} in the kernel)")
    if perf_text:
        cats = perf_categories(perf_text)
        ptotal = sum(cats.values())
        print(f"\nperf (cpu-clock, user + kernel, every thread): {ptotal} samples; "
              "share → CPU ms per artifact (share × the unprofiled CPU):")
        for name, k in cats.most_common():
            print(f"  {k / ptotal:6.1%}  {k / ptotal * cpu / n * 1000:6.3f} ms  {name}")
    print("\npy-spy (GIL held: Python-level work) by category → CPU ms per artifact "
          "(share × the unprofiled user CPU):")
    for name, k in categorise(stacks).most_common():
        print(f"  {k / total:6.1%}  {k / total * user / n * 1000:6.3f} ms  {name}")
    print("\nleaf functions (self):")
    for name, k in leaves(stacks):
        print(f"  {k / total:6.1%}  {name}")
    print("\narchiver functions (inclusive):")
    for name, k in inclusive(stacks):
        print(f"  {k / total:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
