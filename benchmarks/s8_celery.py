"""Scenario 8: scale-out with Celery workers on Redis and a PostgreSQL ledger.

The latency-bound run of scenario 7 (200 ms on every request; 4 in flight per worker)
through the distributed path: an ``archiver watch`` dispatcher (``dispatch.mode:
celery``) lists and queues the jobs in a PostgreSQL ledger and sends job ids through
Redis to N ``celery -A archiver_celery worker -P threads -c 4`` processes
(``concurrency: 4``), for N = 1, 2, 4, 8. Workers are long-lived, as in production: each
is started and warmed up (one job each) before the measured run, whose time runs from
the dispatcher's start until the ledger shows every job archived. Its CPU is the
dispatcher's whole CPU plus what the workers used during the run (``/proc``); the
PostgreSQL and Redis servers' CPU is reported apart (other machines in a fleet).

The embedded default is the same jobs with one ``archiver run`` (SQLite ledger,
``concurrency: 4``): the CPU per artifact target compares the two (≤ 1.15×). The same
``archiver run`` on a PostgreSQL ledger is measured beside it, without a target: it splits
the distributed path's extra CPU into the ledger's share and Celery's (the dispatcher and
the workers' task handling). Claim latency
(one ``claim_next`` statement) and audit-lock wait (the extra time of an audit append
while 8 processes append at once) are measured on the same PostgreSQL afterwards.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
import uuid
from pathlib import Path

from .context import Context, archiver_config, run_archiver, set_aside, write_config
from .harness import ScenarioResult, Target, Variant, alternate
from .measure import BenchError, Measurement, with_parent
from .servers import emulator

KEY = "celery"
TITLE = "8. Scale-out: Celery workers (Redis) with a PostgreSQL ledger"
CONCURRENCY = 4
SIZE = 8 << 10
PER_JOB = 5
PG = os.environ.get("ARCHIVER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("ARCHIVER_BENCH_REDIS", "redis://127.0.0.1:6379/14")
EMBEDDED = f"embedded default: one `archiver run` (SQLite), concurrency {CONCURRENCY}"
EMBEDDED_PG = f"one `archiver run` on the PostgreSQL ledger, concurrency {CONCURRENCY}"


def label(n: int) -> str:
    return f"{n} Celery worker{'s' if n > 1 else ''} × concurrency {CONCURRENCY}"


def sizes(ctx: Context) -> tuple[float, int, tuple[int, ...]]:
    if ctx.smoke:
        return 0.02, 4, (1, 2)
    if ctx.quick:
        return 0.2, 48, (1, 2, 4, 8)
    return 0.2, 240, (1, 2, 4, 8)


def _cpu(pids: list[int]) -> float:
    """user + system seconds of ``pids`` and their live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            stats[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in tree:
            tree.add(pid)
            todo.extend(p for p, (ppid, _) in stats.items() if ppid == pid)
    return sum(stats[p][1] for p in tree)


def _hwm(pids: list[int]) -> int | None:
    """The largest VmHWM (peak RSS, KiB) among ``pids`` and their live descendants."""
    tree, todo, best = set(), list(pids), None
    while todo:
        pid = todo.pop()
        if pid in tree:
            continue
        tree.add(pid)
        try:
            with open(f"/proc/{pid}/status") as f:
                hwm = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")),
                           None)
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        best = max(best or 0, hwm or 0)
        todo.extend(int(c) for c in children)
    return best


def _server_pids() -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                comm = Path(f"/proc/{name}/comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith(("postgres", "redis-server")):
                out.append(int(name))
    return out


def _new_schema(prefix: str) -> tuple[str, str]:
    """(a new PostgreSQL schema, the ledger URL that selects it)."""
    import psycopg
    from urllib.parse import quote
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG else "?"
    return schema, f"{PG}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


#: The plugins of an `archiver` on a PostgreSQL ledger (the fleet adds celery).
PG_PLUGINS = "plangrep,local,checksum,decompress,service,compliance,ledger,postgres"


def _migrate(ctx: Context, config: Path, env: dict[str, str]) -> None:
    """``archiver ledger migrate`` for ``config``, or a BenchError with its stderr."""
    out = subprocess.run([ctx.python, "-m", "archiver", "ledger", "migrate", "-c", str(config)],
                         env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise BenchError(f"ledger migrate -c {config.name}: {out.stderr[-800:]}")


def _drop_schema(schema: str) -> None:
    import psycopg
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class _Fleet:
    """A PostgreSQL schema, a Redis database and N warm Celery workers for one N."""

    def __init__(self, ctx: Context, emu, work: Path, n: int, jobs: int, warm_jobs: int):
        self.ctx, self.emu, self.n, self.jobs = ctx, emu, n, jobs
        self.schema, url = _new_schema("bench")
        self.queue = f"bench-{uuid.uuid4().hex[:6]}"
        self.root, state = work / f"archive-c{n}", work / f"state-c{n}"
        extra = (f'ledger: {{url: "{url}"}}\n'
                 "dispatch: {mode: celery, max_outstanding: 400}\n"
                 f'celery: {{broker_url: "{REDIS}", queue: {self.queue}, '
                 "max_tasks_per_child: null}\n")
        self.config = write_config(work / f"c{n}.yaml", archiver_config(
            emu, self.root, state, concurrency=CONCURRENCY, extra=extra,
            projects=["proj_scale"]))
        self.warm_config = write_config(work / f"c{n}-warm.yaml", archiver_config(
            emu, self.root, state, concurrency=CONCURRENCY, extra=extra,
            projects=["proj_warm"]))
        self.warm_jobs = warm_jobs
        self.env = {**ctx.env, "ARCHIVER_CONFIG": str(self.config),
                    "ARCHIVER_PLUGINS": f"{PG_PLUGINS},celery"}
        _migrate(ctx, self.config, self.env)
        self.workers = [subprocess.Popen(with_parent([
            ctx.python, "-m", "celery", "-A", "archiver_celery", "worker", "-P", "threads",
            "-c", str(CONCURRENCY), "-Q", self.queue, "-n", f"b{i}-{self.queue}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"]),
            env=self.env, stdout=subprocess.DEVNULL, stderr=open(work / f"c{n}-w{i}.err", "wb"),
            start_new_session=True) for i in range(n)]

    def archived(self, project: str) -> int:
        import psycopg
        with psycopg.connect(PG, autocommit=True) as conn:
            return conn.execute(f'SELECT count(*) FROM "{self.schema}".jobs '
                                "WHERE state = 'archived' AND project_id = %s",
                                (project,)).fetchone()[0]

    def dispatch_until(self, project: str, total: int, timeout: float) -> tuple[float, float]:
        """(seconds, dispatcher CPU seconds) of a watch until ``total`` jobs of
        ``project`` are archived."""
        started = time.monotonic()
        disp = subprocess.Popen(with_parent([
            self.ctx.python, "-m", "archiver", "watch", "-c", str(self.config),
            "--test-poll-interval", "5"]), env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            while self.archived(project) < total:
                if disp.poll() is not None:
                    raise BenchError(f"{label(self.n)}: the dispatcher exited "
                                     f"({disp.returncode})")
                if time.monotonic() - started > timeout:
                    raise BenchError(f"{label(self.n)}: {self.archived(project)} of {total} jobs "
                                     f"archived after {timeout:.0f}s")
                time.sleep(0.1)
            seconds = time.monotonic() - started
            cpu = _cpu([disp.pid])
            self.dispatcher_hwm = _hwm([disp.pid])
        finally:
            disp.terminate()
            disp.wait(60)
        return seconds, cpu

    def close(self) -> None:
        for w in self.workers:
            w.terminate()
        for w in self.workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
        _drop_schema(self.schema)


def _warm_up(fleet: _Fleet, timeout: float) -> None:
    """Each worker opens its runtime on its first task: every worker gets jobs of a
    project of their own, dispatched by a watch of their own, before the measured run."""
    saved, fleet.config = fleet.config, fleet.warm_config
    try:
        fleet.dispatch_until("proj_warm", fleet.warm_jobs, timeout)
    finally:
        fleet.config = saved


def run(ctx: Context) -> ScenarioResult:
    latency, jobs, ns = sizes(ctx)
    n_art = jobs * PER_JOB
    ms = f"{latency * 1000:.0f} ms"
    res = ScenarioResult(KEY, TITLE, (
        f"{jobs} jobs × {PER_JOB} artifacts × 8 KiB to local disk ({n_art:,} artifacts), "
        f"{ms} of latency on every request, {CONCURRENCY} in flight per worker, through "
        "an `archiver watch` dispatcher (`dispatch.mode: celery`), Redis and a PostgreSQL "
        "ledger to N `celery -A archiver_celery worker -P threads -c 4` processes "
        f"(`concurrency: {CONCURRENCY}`). Workers are started and warmed up (one job "
        "each) before each measured run; the run's time is from the dispatcher's start "
        "until the ledger shows every job archived; its CPU is the dispatcher's plus the "
        "workers' during the run. PostgreSQL's and Redis's own CPU is shown apart. The "
        "embedded default is one `archiver run` on the same jobs (SQLite ledger); the same "
        "`archiver run` on a PostgreSQL ledger is shown beside it (no target) to split the "
        "extra CPU of the distributed path between the ledger and Celery."))
    work = ctx.scratch("s8")
    trash = work / "trash"
    with emulator() as emu:
        from archiver.testing.emulator import ArtifactSpec

        for j in range(jobs):
            emu.add_job("proj_scale", artifacts=[
                ArtifactSpec(f"parts/{j}/p{i}.bin", size=SIZE) for i in range(PER_JOB)])
        warm = max(ns) * 2   # every worker's threads get a job before the measured run
        for j in range(warm):
            emu.add_job("proj_warm", artifacts=[ArtifactSpec(f"w{j}.bin", size=SIZE)])
        emu.faults.latency = latency
        timeout = 120 + jobs * (1 + PER_JOB) / CONCURRENCY * latency * 3

        def variant(n: int) -> Variant:
            def go(rep: int) -> Measurement:
                fleet = _Fleet(ctx, emu, work / f"rep{rep}", n, jobs, warm)
                try:
                    _warm_up(fleet, timeout)
                    servers = _server_pids()
                    before = _cpu([w.pid for w in fleet.workers])
                    srv_before = _cpu(servers)
                    seconds, disp_cpu = fleet.dispatch_until("proj_scale", jobs, timeout)
                    workers_cpu = _cpu([w.pid for w in fleet.workers]) - before
                    srv = _cpu(servers) - srv_before
                    rss = max(_hwm([w.pid for w in fleet.workers]) or 0,
                              fleet.dispatcher_hwm or 0) or None
                    stored = sum(1 for p in fleet.root.rglob("*/*/data/artifacts/**/*")
                                 if p.is_file() and "parts" in p.parts)
                    if stored != n_art:
                        dirs = sorted({p.parent for p in fleet.root.rglob("*.bin")})
                        raise BenchError(f"{label(n)}: {stored} artifacts stored, not {n_art} "
                                         f"(archived: {fleet.archived('proj_scale')}; e.g. "
                                         f"{dirs[:3]})")
                finally:
                    fleet.close()
                    set_aside(trash, fleet.root)
                return Measurement(seconds, rss_kib=rss, cpu_seconds=disp_cpu + workers_cpu,
                                   extra={"servers_cpu": srv, "dispatcher_cpu": disp_cpu})
            return Variant(label(n), go, work=n_art, unit="artifacts/s",
                           vs=(label(1), EMBEDDED) if n > 1 else (EMBEDDED,))

        def embedded(rep: int) -> Measurement:
            root, state = work / f"archive-e{rep}", work / f"state-e{rep}"
            cfg = write_config(work / f"e{rep}.yaml", archiver_config(
                emu, root, state, concurrency=CONCURRENCY, projects=["proj_scale"]))
            try:
                return run_archiver(ctx, cfg, what=EMBEDDED, timeout=timeout,
                                    expect_archived=jobs)
            finally:
                set_aside(trash, root, state)

        def embedded_pg(rep: int) -> Measurement:
            root, state = work / f"archive-p{rep}", work / f"state-p{rep}"
            schema, url = _new_schema("bench_embedded")
            cfg = write_config(work / f"p{rep}.yaml", archiver_config(
                emu, root, state, concurrency=CONCURRENCY, projects=["proj_scale"],
                extra=f'ledger: {{url: "{url}"}}\n'))
            env = {**ctx.env, "ARCHIVER_PLUGINS": PG_PLUGINS}
            try:
                _migrate(ctx, cfg, env)
                return run_archiver(ctx, cfg, what=EMBEDDED_PG, timeout=timeout, env=env,
                                    expect_archived=jobs)
            finally:
                _drop_schema(schema)
                set_aside(trash, root, state)

        variants = [Variant(EMBEDDED, embedded, role="reference", work=n_art,
                            unit="artifacts/s", reps=min(ctx.reps, 2)),
                    Variant(EMBEDDED_PG, embedded_pg, role="reference", work=n_art,
                            unit="artifacts/s", reps=min(ctx.reps, 2), vs=(EMBEDDED,))]
        variants += [variant(n) for n in ns]
        ctx.log(f" {n_art} artifacts, {ms}: N = {', '.join(map(str, ns))} x {ctx.reps}")
        try:
            res.rows = alternate(variants, ctx.reps, ctx.log)
        finally:
            emu.faults.latency = 0
        from .context import remove
        remove(trash)
        claim, wait = _ledger_timings()
    _report(res, ns, n_art, ms, claim, wait)
    return res


def _ledger_timings() -> tuple[dict[str, float], dict[str, float]]:
    """(claim_next ms: median, p95), (audit append ms alone vs with 8 processes)."""
    from benchmarks.ledger_timing import measure
    return measure(PG)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _report(res: ScenarioResult, ns, n_art: int, ms: str, claim: dict, wait: dict) -> None:
    emb = res.row(EMBEDDED)
    emb_cpu = _median(m.cpu_seconds for m in emb.runs)
    emb_pg = res.row(EMBEDDED_PG)
    pg_cpu = _median(m.cpu_seconds for m in emb_pg.runs)

    def ms_per(seconds: float | None) -> str:
        return "–" if seconds is None else f"{seconds / n_art * 1000:.2f}"

    lines = [f"Speed-up and CPU per artifact ({n_art:,} artifacts, {ms} per request):", "",
             "| N | median s | artifacts/s | speed-up vs N = 1 | target 0.8·N | vs embedded "
             "| CPU ms per artifact (dispatcher + workers) | of which dispatcher | vs "
             "embedded | PostgreSQL + Redis CPU ms per artifact |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| embedded (SQLite) | {emb.median:.2f} | {emb.rate(emb.median):.1f} | – | – | "
             f"1.00× | {ms_per(emb_cpu)} | – | 1.00× | – |",
             f"| embedded, PostgreSQL ledger | {emb_pg.median:.2f} | "
             f"{emb_pg.rate(emb_pg.median):.1f} | – | – | {res.ratio(emb_pg, EMBEDDED):.2f}× | "
             f"{ms_per(pg_cpu)} | – | {pg_cpu / emb_cpu:.2f}× | – |"]
    for n in ns:
        row = res.row(label(n))
        speed = res.ratio(row, label(1)) if n > 1 else 1.0
        cpu = _median(m.cpu_seconds for m in row.runs)
        disp = _median(m.extra.get("dispatcher_cpu") for m in row.runs)
        srv = _median(m.extra.get("servers_cpu") for m in row.runs) or 0.0
        vs = cpu / emb_cpu
        lines.append(f"| {n} | {row.median:.2f} | {row.rate(row.median):.1f} | "
                     f"{speed:.2f}× | {0.8 * n:.1f}× | {res.ratio(row, EMBEDDED):.2f}× | "
                     f"{ms_per(cpu)} | {ms_per(disp)} | {vs:.2f}× | {ms_per(srv)} |")
        if n > 1:
            res.targets.append(Target(f"N = {n}: speed-up ≥ {0.8 * n:.1f}× (0.8·N) over one "
                                      "Celery worker", speed >= 0.8 * n, f"{speed:.2f}×"))
        res.targets.append(Target(f"N = {n}: CPU per artifact ≤ 1.15× the embedded default",
                                  vs <= 1.15, f"{cpu / n_art * 1000:.2f} vs "
                                  f"{emb_cpu / n_art * 1000:.2f} ms, {vs:.2f}×"))
    lines += ["", "The PostgreSQL row is the same `archiver run` as the embedded default on a "
                  "PostgreSQL ledger (no target): the CPU between it and the embedded default "
                  "is the ledger's share of the distributed path's extra CPU, and what "
                  "remains is Celery's (the dispatcher, which starts with each measured run, "
                  "and the workers' task handling).",
              "", f"Claim latency (one `claim_next` on PostgreSQL, 8 threads claiming at "
                  f"once): median {claim['median']:.2f} ms, p95 {claim['p95']:.2f} ms. "
                  f"Audit-lock wait (one audit append alone: median "
                  f"{wait['alone']:.2f} ms; with 8 processes appending at once: median "
                  f"{wait['contended']:.2f} ms, so ~{wait['contended'] - wait['alone']:.2f} "
                  "ms waiting for the chain's lock)."]
    res.tables.append("\n".join(lines))
