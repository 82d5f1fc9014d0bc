"""Scenario 4: the cost of running again over an archived backlog of 1,000 jobs.

The second ``archiver run`` should make no artifact request at all: the ledger knows
every job is archived. Requests are counted by the emulator's own request log, by route.
"""

from __future__ import annotations

from collections import Counter

from .context import Context, archiver_config, client, remove, run_archiver, write_config
from .harness import ScenarioResult, Target, Variant, alternate
from .measure import BenchError
from .servers import emulator

KEY = "rerun"
TITLE = "4. Rerun over an archived backlog"
LATENCY = 0.020
ROUTES = ("projects", "jobs", "job", "result", "artifact", "project_artifact", "storage")
ARTIFACT_ROUTES = ("artifact", "project_artifact", "storage")


def run(ctx: Context) -> ScenarioResult:
    jobs = ctx.size(1000, 250, 5)
    res = ScenarioResult(KEY, TITLE, (
        f"A backlog of {jobs} completed jobs (2 small artifacts each) is archived once; then "
        f"the second `archiver run` is timed, with {LATENCY * 1000:.0f} ms of latency on "
        "every request. The baseline is the naive script's second run "
        "(`benchmarks/clients/naive.py --skip-existing`): it must read every result to "
        "learn the artifacts, and skips those whose file exists. For scale, archiver's "
        "first run over the same backlog (empty archive, same latency) is shown too. "
        "Requests are counted by the emulator's request log."))
    work = ctx.scratch("s4")
    with emulator() as emu:
        ids = [emu.add_job("proj_backlog")["id"] for _ in range(jobs)]
        n_art = sum(len(emu.artifact_paths(i)) for i in ids)
        root, state = work / "archive", work / "state"
        cfg = write_config(work / "archiver.yaml", archiver_config(emu, root, state,
                                                                   concurrency=16))
        fresh_root, fresh_state = work / "archive-first", work / "state-first"
        fresh_cfg = write_config(work / "archiver-first.yaml", archiver_config(
            emu, fresh_root, fresh_state, concurrency=16))
        naive_out = work / "naive"
        timeout = 120 + jobs * 0.5
        ctx.log(f" setting up: archiving {jobs} jobs ({n_art} artifacts) with archiver and "
                "with the naive script")
        first = run_archiver(ctx, cfg, what="archiver, initial run", timeout=timeout,
                             expect_archived=jobs)
        _, out = client(ctx, "naive", emu.base_url, str(naive_out),
                        what="naive script, initial run", timeout=timeout)
        if out.split()[0] != str(n_art):
            raise BenchError(f"naive script, initial run: downloaded {out.strip()}")
        ctx.log(f" initial archiver run without latency: {first.seconds:.1f} s")

        def counted(fn):
            def run(rep: int):
                emu.faults.latency = LATENCY
                emu.requests.clear()
                m = fn()
                routes = Counter(r.route for r in emu.requests.snapshot())
                m.extra["requests"] = dict(routes)
                return m
            return run

        def rerun():
            m = run_archiver(ctx, cfg, what="archiver, second run", timeout=timeout,
                             expect_archived=0)
            report = m.extra["report"]
            if report["skipped_already_archived"] != jobs or report["bytes_received"]:
                raise BenchError(f"archiver, second run: {report}")
            return m

        def naive_rerun():
            m, out = client(ctx, "naive", emu.base_url, str(naive_out), "--skip-existing",
                            what="naive script, second run", timeout=timeout + jobs * 0.1)
            if out.split() != ["0", str(n_art)]:
                raise BenchError(f"naive script, second run: downloaded/skipped {out.strip()}")
            return m

        def first_run():
            return run_archiver(ctx, fresh_cfg, what="archiver, first run", timeout=timeout,
                                expect_archived=jobs)

        naive_l = "naive script, second run (skips existing files)"
        arch_l = "archiver, second run"
        first_l = "archiver, first run (empty archive)"
        variants = [
            Variant(naive_l, counted(naive_rerun), role="baseline", work=jobs, unit="jobs/s"),
            Variant(arch_l, counted(rerun), work=jobs, unit="jobs/s", vs=(naive_l, first_l)),
            Variant(first_l, counted(first_run), role="reference", work=jobs, unit="jobs/s",
                    reset=lambda: remove(fresh_root, fresh_state)),
        ]
        try:
            res.rows = alternate(variants, ctx.reps, ctx.log)
        finally:
            emu.faults.latency = 0
    lines = ["API requests per run (emulator request log, by route; the same in every "
             "repetition unless a range is shown):", "",
             "| variant | " + " | ".join(ROUTES) + " | total |",
             "|---|" + "---:|" * (len(ROUTES) + 1)]
    for row in res.rows:
        counts = row.extra("requests")
        cells = []
        for route in (*ROUTES, None):
            values = [sum(c.values()) if route is None else c.get(route, 0) for c in counts]
            lo, hi = min(values), max(values)
            cells.append(f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}")
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    res.tables.append("\n".join(lines))
    arch = res.row(arch_l)
    artifact_requests = max(sum(c.get(r, 0) for r in ARTIFACT_ROUTES)
                            for c in arch.extra("requests"))
    total = max(sum(c.values()) for c in arch.extra("requests"))
    res.targets.append(Target("second run: no artifact requests at all",
                              artifact_requests == 0,
                              f"{artifact_requests} artifact requests, {total} requests in all, "
                              f"{arch.median:.2f} s"))
    return res
