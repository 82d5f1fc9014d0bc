"""Scenario 7: scale-out on a latency-bound run, ``archiver run --workers N``.

200 ms of emulator latency on every request and 4 in flight per worker process
(``concurrency: 4``): a run that no single process can speed up with CPU, only with more
requests in flight. The same jobs (160 × 5 artifacts × 8 KiB by default) are archived with
N = 1, 2, 4 and 8 worker processes (``workers: N``; N = 1 is the one ``archiver run``
process, no child); the speed-up is throughput at N / throughput at N = 1 (target
≥ 0.8·N), CPU per artifact is the CPU of the whole process tree / artifacts (target
≤ 1.15× one process). Two more rows measure the fixed cost of one worker process
(``archiver worker --drain`` with nothing to claim): started with ``Popen`` (interpreter,
imports, config, plugins, ledger, register/unregister: what the fork server, which the
supervisor starts once per run, pays once), and forked from the fork server
(archiver.workers.zygote: config, plugins, ledger, register/unregister), which is what
every extra process adds whatever the run's size.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from .context import (Context, archiver_config, remove, run_archiver, set_aside,
                      write_config)
from .harness import ScenarioResult, Target, Variant, alternate
from .measure import BenchError, Measurement, run_process
from .servers import emulator

KEY = "scaleout"
TITLE = "7. Scale-out: worker processes on a latency-bound run"
CONCURRENCY = 4       # per worker process
SIZE = 8 << 10
PER_JOB = 5
RSS_LIMIT_MIB = 100
IDLE = "one worker process alone, nothing to claim (its fixed cost)"
FORKED = "one worker forked from the fork server, nothing to claim (its fixed cost)"
# Starts a fork server, forks one `archiver worker --drain --jsonl` from it and prints the
# child's CPU (wait4 in the zygote) and the zygote's own (its imports, paid once per run).
_FORKED_SCRIPT = """
import json, os, resource, sys, time
from archiver.workers.forkserver import ForkServer
fs = ForkServer()
assert fs.start(), "no fork server"
t0 = time.perf_counter()
child = fs.spawn([sys.executable, "-m", "archiver", "worker", "-c", sys.argv[1], "--drain",
                  "--jsonl"], dict(os.environ))
child.stdout.read()
rc = child.wait(120)
seconds = time.perf_counter() - t0
fs.close()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "cpu": child.cpu, "seconds": seconds, "rss": child.maxrss_kib,
                  "zygote_cpu": ru.ru_utime + ru.ru_stime - child.cpu}))
"""


def label(n: int) -> str:
    if n == 1:
        return f"1 process (workers: 1), concurrency {CONCURRENCY}"
    return f"{n} worker processes × concurrency {CONCURRENCY}"


def _count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*/*/data/artifacts/**/*") if p.is_file())


def sizes(ctx: Context) -> tuple[float, int, tuple[int, ...], dict[int, int]]:
    """(latency s, jobs, worker counts, repetitions per N). Default: the run at N = 8
    lasts ~10 s; N = 1 and 2 (the longest runs, ~80 and ~40 s) get 2 repetitions, so that
    the scenario stays under 6 minutes."""
    if ctx.smoke:
        return 0.02, 4, (1, 2), {}
    if ctx.quick:
        return 0.2, 48, (1, 2, 4, 8), {}
    return 0.2, 240, (1, 2, 4, 8), {1: min(ctx.reps, 2), 2: min(ctx.reps, 2)}


def run(ctx: Context) -> ScenarioResult:
    latency, jobs, ns, reps = sizes(ctx)
    n_art = jobs * PER_JOB
    ms = f"{latency * 1000:.0f} ms"
    res = ScenarioResult(KEY, TITLE, (
        f"{jobs} jobs × {PER_JOB} artifacts × 8 KiB to local disk ({n_art:,} artifacts), "
        f"{ms} of latency added by the emulator to every request (listing, results, "
        f"artifacts), {CONCURRENCY} in flight per process (`concurrency: {CONCURRENCY}`), "
        f"with `workers: N` for N = {', '.join(map(str, ns))} (N = 1 is the one `archiver "
        "run` process; with N > 1 it lists and triages the jobs, queues them in the SQLite "
        "ledger and N `archiver worker` children claim them). Same jobs, same latency for "
        "every N: the speed-up is throughput at N / throughput at N = 1. The last two rows "
        "are the fixed cost of one worker process, `archiver worker --drain` with nothing "
        "to claim: started with `Popen` (interpreter start-up, imports, config, plugins, "
        "opening the ledger, registering and unregistering; the supervisor's fork server "
        "pays about this once per run), and forked from the fork server as the supervisor "
        "starts its workers (config, plugins, ledger: what each extra process adds to the "
        "run's CPU whatever its size). Peak RSS is the largest single process (GNU time); the table "
        "below also shows the supervisor and the largest worker apart (sampled from "
        "`/proc`)."))
    work = ctx.scratch("s7")
    trash = work / "trash"
    with emulator() as emu:
        from archiver.testing.emulator import ArtifactSpec

        for j in range(jobs):
            emu.add_job("proj_scale", artifacts=[
                ArtifactSpec(f"parts/{j}/p{i}.bin", size=SIZE) for i in range(PER_JOB)])
        emu.faults.latency = latency
        # N = 1 needs ~ jobs × (1 + PER_JOB) requests / CONCURRENCY × latency; × 3 + slack
        timeout = 120 + jobs * (1 + PER_JOB) / CONCURRENCY * latency * 3

        def variant(n: int) -> Variant:
            root, state = work / f"archive-{n}", work / f"state-{n}"
            cfg = write_config(work / f"w{n}.yaml", archiver_config(
                emu, root, state, concurrency=CONCURRENCY, workers=n))

            def go(rep: int) -> Measurement:
                m = run_archiver(ctx, cfg, what=label(n), timeout=timeout,
                                 expect_archived=jobs, per_process_rss=True)
                if _count_files(root) != n_art:
                    raise BenchError(f"{label(n)}: {_count_files(root)} artifacts stored, "
                                     f"not {n_art}")
                return m
            return Variant(label(n), go,
                           work=n_art, unit="artifacts/s",
                           vs=(label(1),) if n > 1 else (), reps=reps.get(n),
                           reset=lambda: set_aside(trash, root, state))

        # the fixed cost of one worker: a ledger with nothing queued
        idle_cfg = write_config(work / "idle.yaml", archiver_config(
            emu, work / "archive-idle", work / "state-idle", concurrency=CONCURRENCY))

        def idle(rep: int) -> Measurement:
            return run_process([ctx.python, "-m", "archiver", "worker", "-c", str(idle_cfg),
                                "--drain", "--jsonl"], what=IDLE, timeout=120,
                               env=ctx.env).measurement

        def forked(rep: int) -> Measurement:
            out = run_process([ctx.python, "-c", _FORKED_SCRIPT, str(idle_cfg)], what=FORKED,
                              timeout=120, env=ctx.env).stdout
            got = json.loads(out.strip().splitlines()[-1])
            if got["rc"] != 0:
                raise BenchError(f"{FORKED}: exit code {got['rc']}")
            return Measurement(got["seconds"], rss_kib=got["rss"], cpu_seconds=got["cpu"],
                               extra={"zygote_cpu": got["zygote_cpu"]})

        variants = [variant(n) for n in ns]
        variants.append(Variant(IDLE, idle, role="reference", note=(
            "`archiver worker -c FILE --drain --jsonl` started with `Popen` on an empty "
            "ledger: it claims nothing and exits (the fork server pays about this once per "
            "run: interpreter and imports)")))
        if sys.platform.startswith("linux"):
            variants.append(Variant(FORKED, forked, role="reference", note=(
                "the same command forked from the fork server (archiver.workers.zygote), as "
                "the supervisor starts its workers: the child's own CPU (from `wait4`); "
                "time from the spawn request to the child's exit; its peak RSS from `wait4` too "
                "(shared pages of the fork server count in it)")))
        ctx.log(f" {n_art} artifacts, {ms}: N = {', '.join(map(str, ns))} "
                f"x {ctx.reps} runs (fewer for: {reps or 'none'})")
        try:
            res.rows = alternate(variants, ctx.reps, ctx.log)
        finally:
            emu.faults.latency = 0
            remove(trash)
    _report(res, ns, n_art, ms)
    return res


def _median_cpu(row) -> float | None:
    cpu = [m.cpu_seconds for m in row.runs if m.cpu_seconds is not None]
    return statistics.median(cpu) if cpu else None


def _report(res: ScenarioResult, ns: tuple[int, ...], n_art: int, ms: str) -> None:
    one = res.row(label(1))
    cpu1 = _median_cpu(one)
    once = _median_cpu(res.row(IDLE)) or 0.0
    try:
        fixed = _median_cpu(res.row(FORKED)) or 0.0
    except KeyError:  # no fork server: each worker starts with Popen
        once, fixed = 0.0, once
    lines = [f"Speed-up and CPU per artifact ({n_art:,} artifacts, {ms} per request; "
             f"*steady-state*: the CPU less the fixed costs of the worker processes (the "
             f"fork server's start-up, {once:.2f} s, once, and N × one forked worker's, "
             f"{fixed:.2f} s), i.e. what each artifact costs once the processes run; "
             "information, not a target):", "",
             "| N | median s | artifacts/s | speed-up | target 0.8·N | CPU s | CPU ms per "
             "artifact | vs N = 1 | steady-state ms per artifact | peak RSS MiB: largest "
             "process | run process | largest worker |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    largest = 0
    for n in ns:
        row = res.row(label(n))
        rate = row.rate(row.median)
        speed = res.ratio(row, label(1)) if n > 1 else 1.0
        cpu = _median_cpu(row)
        per = cpu / n_art * 1000 if cpu is not None else None
        vs1 = cpu / cpu1 if cpu and cpu1 else None
        steady = (cpu - (once + n * fixed if n > 1 else 0)) / n_art * 1000 if cpu else None
        parents = [k for k in row.extra("rss_parent_kib") if k]
        workers = [k for ks in row.extra("rss_workers_kib") for k in ks]
        rss = row.peak_rss_kib or 0
        largest = max(largest, rss)
        lines.append(f"| {n} | {row.median:.2f} | {rate:.1f} | {speed:.2f}× | "
                     f"{0.8 * n:.1f}× | {cpu:.2f} | {per:.2f} | {vs1:.2f}× | "
                     f"{steady:.2f} | {rss / 1024:.1f} | "
                     f"{max(parents) / 1024 if parents else float('nan'):.1f} | "
                     + (f"{max(workers) / 1024:.1f}" if workers else "– (none)") + " |")
        if n > 1:
            res.targets.append(Target(f"N = {n}: speed-up ≥ {0.8 * n:.1f}× (0.8·N) over one "
                                      "process", speed >= 0.8 * n, f"{speed:.2f}×"))
            res.targets.append(Target(f"N = {n}: CPU per artifact ≤ 1.15× one process",
                                      vs1 <= 1.15, f"{per:.2f} vs {cpu1 / n_art * 1000:.2f} "
                                      f"ms, {vs1:.2f}×"))
    res.targets.append(Target(f"every N: peak RSS of the largest single process ≤ "
                              f"{RSS_LIMIT_MIB} MiB", largest / 1024 <= RSS_LIMIT_MIB,
                              f"{largest / 1024:.0f} MiB"))
    res.tables.append("\n".join(lines))
