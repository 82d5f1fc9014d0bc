"""Scenario 3: many small artifacts (200 jobs × 20 artifacts × 8 KiB) to local disk.

With 20 ms of emulator latency on every request (a WAN round trip): archiver with 16
artifacts in flight in total, as one process (``workers: 1``, concurrency 16) and as 2 and
4 worker processes (``workers: 2``/``4``, concurrency 8/4 each), against the naive
sequential requests script and against rclone ``copyurl`` fed the same URLs. Without
latency: archiver's artifacts/s against the ceiling of bare keep-alive clients (curl
``--parallel``, a threaded requests loop).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .context import Context, archiver_config, client, remove, run_archiver, set_aside, write_config
from .harness import ScenarioResult, Target, Variant, alternate
from .measure import BenchError, run_process
from .servers import emulator

KEY = "small"
TITLE = "3. Many small artifacts"
LATENCY = 0.020
CONCURRENCY = 16           # artifacts in flight in total, whatever the number of processes
WORKERS = (1, 2, 4)        # worker processes at 20 ms; concurrency CONCURRENCY // N each
WORKERS_NO_LATENCY = (1, 2)
SIZE = 8 << 10

# CPU per artifact before the worker-process restructuring (docs/benchmarks.md of the run
# of 2026-11-29, commit 2de04a9: median CPU s of the whole run / 4,000 artifacts).
CPU_PER_ARTIFACT_BEFORE = {(LATENCY, 1): 17.6 / 4000, (0.0, 1): 18.5 / 4000}
BEFORE_RUN = "2026-11-29, commit 2de04a9"

# Where one process's CPU goes (py-spy, see the notes); measured by hand, not per run.
PROFILE_NOTE = None  # filled in below the function definitions


def archiver_label(lat: float, workers: int) -> str:
    ms = f"{lat * 1000:.0f} ms"
    if workers == 1:
        return f"{ms}: archiver, 1 process, concurrency {CONCURRENCY}"
    return (f"{ms}: archiver, {workers} worker processes × concurrency "
            f"{CONCURRENCY // workers}")


def _count_files(root: Path, artifacts_only: bool = False) -> int:
    """Files below ``root`` (only those under ``*/data/artifacts/`` when asked)."""
    pattern = "*/*/data/artifacts/**/*" if artifacts_only else "*"
    return sum(1 for p in root.rglob(pattern) if p.is_file())


def _rclone_header_check(ctx: Context, url: str, work: Path) -> str:
    """Does this rclone's copyurl send ``--header``? Fetch one URL with and without it."""
    def fetch(header: bool) -> int:
        opt = '--header "Authorization: Bearer $PLANGREP_API_KEY" ' if header else ""
        return run_process(f'rclone copyurl -q --retries 1 {opt}"{url}" "{work}/probe.bin"',
                           what="rclone probe", timeout=60, env=ctx.env,
                           check=False).returncode
    with_header, without = fetch(True), fetch(False)
    remove(work / "probe.bin")
    if with_header != 0:
        raise BenchError("rclone copyurl --header could not fetch an authenticated URL")
    return (f"rclone `copyurl` sends `--header \"Authorization: Bearer …\"`: with it an "
            f"artifact URL downloads (exit {with_header}), without it the emulator refuses "
            f"it (exit {without}), so rclone fetches the same authenticated URLs as the others.")


def run(ctx: Context) -> ScenarioResult:
    jobs = ctx.size(200, 50, 3)
    per_job = ctx.size(20, 20, 4)
    n = jobs * per_job
    res = ScenarioResult(KEY, TITLE, (
        f"{jobs} jobs × {per_job} artifacts × 8 KiB to local disk ({n} artifacts). With "
        f"{LATENCY * 1000:.0f} ms of latency added by the emulator to every request: archiver "
        f"with {CONCURRENCY} artifacts in flight in total, as one process (`workers: 1`, "
        f"`concurrency: {CONCURRENCY}`) and as "
        + " and ".join(f"{w} worker processes (`workers: {w}`, `concurrency: "
                       f"{CONCURRENCY // w}` each)" for w in WORKERS if w > 1)
        + " (it also lists the jobs, reads every result, stores "
        "job.json, result.json and BagIt tag files per job, fsyncs every file and records "
        "each object in its ledger) against a naive sequential script "
        "(`benchmarks/clients/naive.py`: `requests.get` per request, as the polling example "
        "suggests; it lists and reads results too) and against rclone `copyurl`, which is "
        "simply fed the artifact URLs (no listing, no results). Without latency: archiver against bare keep-alive clients fetching the same URLs "
        "concurrently and discarding the bodies (the most any client gets from the emulator). "
        "Each run's output is moved aside, not deleted, until the scenario ends: on this "
        "machine's ext4 (no journal) files created within minutes of a mass deletion make the "
        "kernel scan past the deleted inodes (`recently_deleted`), which took up to a quarter "
        "of archiver's CPU in a profile and slowed whichever run followed a deletion."))
    work = ctx.scratch("s3")
    trash = work / "trash"

    def reset(*paths: Path):
        return lambda: set_aside(trash, *paths)

    with emulator() as emu:
        from archiver.testing.emulator import ArtifactSpec

        urls = []
        for j in range(jobs):
            job = emu.add_job("proj_small", artifacts=[
                ArtifactSpec(f"pages/{j}/p{i:03d}.json", size=SIZE) for i in range(per_job)])
            urls += [emu.artifact_url(job["id"], p) for p in emu.artifact_paths(job["id"])]
        url_file = work / "urls.txt"
        url_file.write_text("\n".join(urls) + "\n")
        timeout = 120 + n * 0.2

        def latency(value: float):
            emu.faults.latency = value

        def archiver(lat: float, workers: int, vs: tuple[str, ...]) -> Variant:
            label = archiver_label(lat, workers)
            tag = f"{lat}-w{workers}"
            root, state = work / f"archive-{tag}", work / f"state-{tag}"
            cfg = write_config(work / f"archiver-{tag}.yaml", archiver_config(
                emu, root, state, concurrency=CONCURRENCY // workers, workers=workers))

            def run(rep: int):
                latency(lat)
                m = run_archiver(ctx, cfg, what=label, timeout=timeout, expect_archived=jobs,
                                 per_process_rss=True)
                if _count_files(root, artifacts_only=True) != n:
                    raise BenchError(f"{label}: {_count_files(root, True)} artifacts stored")
                return m
            return Variant(label, run, work=n, unit="artifacts/s", vs=vs,
                           reset=reset(root, state))

        naive_out = work / "naive"

        def naive(rep: int):
            latency(LATENCY)
            m, out = client(ctx, "naive", emu.base_url, str(naive_out), what="naive script",
                            timeout=timeout + n * LATENCY * 3)
            if out.split()[0] != str(n):
                raise BenchError(f"naive script downloaded {out.strip()} artifacts, not {n}")
            return m

        def url_client(module: str, out: Path, what: str):
            """A client of ``benchmarks/clients`` fed the URL file; it prints the count."""
            def run(rep: int):
                latency(LATENCY)
                m, stdout = client(ctx, module, str(url_file), str(out), str(CONCURRENCY),
                                   what=what, timeout=timeout)
                if stdout.strip() != str(n):
                    raise BenchError(f"{what} stored {stdout.strip()} files, not {n}")
                return m
            return run

        rc_out = work / "rclone-rc"
        rclone_rc = url_client("rclone_rc", rc_out, "rclone rcd copyurl")

        # rclone copyurl as a shell user runs it: one process per URL. Its start-up
        # dominates, so by default it gets the first tenth of the URLs (rates compare).
        subset = urls if (ctx.large or ctx.smoke) else urls[:max(1, len(urls) // 10)]
        pp_file, pp_out = work / "urls-pp.txt", work / "rclone-pp"
        pp_file.write_text("".join(f"{u} {pp_out}/{i}.bin\n" for i, u in enumerate(subset)))

        def rclone_pp(rep: int):
            latency(LATENCY)
            pp_out.mkdir(exist_ok=True)
            cmd = (f'xargs -P {CONCURRENCY} -L 1 rclone copyurl -q '
                   f'--header "Authorization: Bearer $PLANGREP_API_KEY" < "{pp_file}"')
            m = run_process(cmd, what="rclone copyurl per URL", timeout=timeout * 4,
                            env=ctx.env).measurement
            if _count_files(pp_out) != len(subset):
                raise BenchError(f"rclone copyurl per URL stored {_count_files(pp_out)} files")
            return m

        durable_out = work / "durable"
        durable = url_client("durable", durable_out, "minimal durable client")

        curl_cfg = work / "curl.cfg"
        curl_cfg.write_text("".join(f'url = "{u}"\noutput = "/dev/null"\n' for u in urls))

        def curl_parallel(rep: int):
            latency(0)
            cmd = (f'curl -sS --fail --parallel --parallel-max {CONCURRENCY} '
                   f'-H "Authorization: Bearer $PLANGREP_API_KEY" -K "{curl_cfg}"')
            return run_process(cmd, what="curl --parallel", timeout=timeout,
                               env=ctx.env).measurement

        def py_ceiling(rep: int):
            latency(0)
            m, out = client(ctx, "ceiling", str(url_file), str(CONCURRENCY),
                            what="requests keep-alive", timeout=timeout)
            if out.split()[0] != str(n):
                raise BenchError(f"keep-alive client read {out.strip()}")
            return m

        lat_ms = f"{LATENCY * 1000:.0f} ms"
        naive_l = f"{lat_ms}: naive sequential script"
        rc_l = f"{lat_ms}: rclone copyurl via rcd, {CONCURRENCY} concurrent"
        pp_l = (f"{lat_ms}: rclone copyurl, one process per URL (xargs -P {CONCURRENCY})"
                + ("" if len(subset) == n else f", first {len(subset)} URLs"))
        durable_l = (f"{lat_ms}: minimal durable Python client, {CONCURRENCY} threads "
                     "(requests, sha256, fsync; no ledger)")
        curl_l = f"0 ms: curl --parallel --parallel-max {CONCURRENCY} (keep-alive)"
        py_l = f"0 ms: requests, {CONCURRENCY} threads × Session (keep-alive)"
        have_rclone = run_process("command -v rclone", what="rclone", timeout=10,
                                  check=False).returncode == 0
        refs = (naive_l, rc_l, durable_l) if have_rclone else (naive_l, durable_l)
        variants = [Variant(naive_l, naive, role="baseline", work=n, unit="artifacts/s",
                            reset=reset(naive_out)),
                    *(archiver(LATENCY, w, refs) for w in WORKERS),
                    Variant(durable_l, durable, role="reference", work=n, unit="artifacts/s",
                            reset=reset(durable_out),
                            note="`benchmarks/clients/durable.py`: only what a crash-safe copy "
                                 "needs (temporary file, fsync, link, directory fsync), fed the "
                                 "artifact URLs: about the most a thread-based Python archiver "
                                 "can reach here")]
        if have_rclone:
            res.notes.append(_rclone_header_check(ctx, urls[0], work))
            variants += [
                Variant(rc_l, rclone_rc, role="baseline", work=n, unit="artifacts/s",
                        reset=reset(rc_out)),
                Variant(pp_l, rclone_pp, role="baseline", work=len(subset),
                        unit="artifacts/s", reps=1, reset=reset(pp_out),
                        note="one repetition: each URL costs an rclone start-up")]
        else:
            res.notes.append("rclone is not installed (`apt-get install rclone`): its rows "
                             "are missing.")
        variants += [*(archiver(0.0, w, (curl_l, py_l)) for w in WORKERS_NO_LATENCY),
                     Variant(curl_l, curl_parallel, role="reference", work=n,
                             unit="artifacts/s"),
                     Variant(py_l, py_ceiling, role="reference", work=n, unit="artifacts/s")]
        ctx.log(f" {n} artifacts: {len(variants)} variants x {ctx.reps} runs")
        try:
            res.rows = alternate(variants, ctx.reps, ctx.log)
        finally:
            latency(0)
            remove(trash)
    _targets(res, n, have_rclone, naive_l, rc_l, pp_l, durable_l, curl_l, py_l)
    return res


def _targets(res: ScenarioResult, n: int, have_rclone: bool, naive_l: str, rc_l: str,
             pp_l: str, durable_l: str, curl_l: str, py_l: str) -> None:
    lat_ms = f"{LATENCY * 1000:.0f} ms"
    rows = {w: res.row(archiver_label(LATENCY, w)) for w in WORKERS}
    best_w = max(WORKERS, key=lambda w: rows[w].rate(rows[w].median) or 0)
    best = rows[best_w]
    which = f"best: workers {best_w}"
    inflight = f"{CONCURRENCY} in flight in total"
    r = res.ratio(best, naive_l)
    res.targets.append(Target(f"{lat_ms} latency, {inflight}, best worker count: ≥ 10× the "
                              "naive script", r >= 10, f"{r:.1f}×, {which}"))
    if have_rclone:
        r = res.ratio(best, rc_l)
        res.targets.append(Target(f"{lat_ms} latency, {inflight}, best worker count: ≥ rclone "
                                  "copyurl (rcd, same concurrency)", r >= 1,
                                  f"{r:.2f}×, {which}"))
        r = res.ratio(best, pp_l)
        res.targets.append(Target(f"{lat_ms} latency, {inflight}, best worker count: ≥ rclone "
                                  "copyurl (one process per URL)", r >= 1, f"{r:.2f}×, {which}"))
    else:
        res.targets.append(Target("≥ rclone copyurl", None, "rclone not installed"))
    r = res.ratio(rows[1], durable_l)
    res.targets.append(Target(f"{lat_ms} latency: one process (workers 1, concurrency "
                              f"{CONCURRENCY}) ≥ 1.0× the minimal durable Python client",
                              r >= 1.0, f"{r:.2f}×"))
    for w in WORKERS[1:]:
        r = res.ratio(rows[w], rows[1].label)
        res.targets.append(Target(f"{lat_ms} latency: workers {w} × concurrency "
                                  f"{CONCURRENCY // w} vs one process (information, no "
                                  "target)", None, f"{r:.2f}×"))
    fast = res.row(archiver_label(0.0, 1))
    best0 = max(res.ratio(res.row(v), fast.label) for v in (curl_l, py_l))
    res.targets.append(Target("no latency: share of the keep-alive ceiling, one process "
                              "(information, no target)", None,
                              f"{1 / best0:.0%} of the faster ceiling"))
    res.tables.append(cpu_table(res, n))
    if PROFILE_NOTE:
        res.notes.append(PROFILE_NOTE)


def cpu_table(res: ScenarioResult, n: int) -> str:
    """CPU per artifact of every archiver row (whole process tree), before and after, and
    the peak RSS of the supervisor and its workers apart."""
    lines = [f"CPU per artifact (CPU s of the whole process tree, median of the runs, / {n:,} "
             f"artifacts; *before*: the run of {BEFORE_RUN}, one process) and peak RSS per "
             "process (sampled from `/proc`: the `archiver run` process and the largest "
             "worker; the table above shows the kernel's largest single process):", "",
             "| variant | CPU s | CPU ms per artifact | before | peak RSS MiB: run process "
             "| largest worker |", "|---|---:|---:|---:|---:|---:|"]
    for lat, ws in ((LATENCY, WORKERS), (0.0, WORKERS_NO_LATENCY)):
        for w in ws:
            row = res.row(archiver_label(lat, w))
            cpu = [m.cpu_seconds for m in row.runs if m.cpu_seconds is not None]
            med = statistics.median(cpu) if cpu else None
            before = CPU_PER_ARTIFACT_BEFORE.get((lat, w))
            parents = [k for k in row.extra("rss_parent_kib") if k]
            workers = [k for ks in row.extra("rss_workers_kib") for k in ks]
            lines.append(
                f"| {row.label} | {_f(med)} | {_f(med and med / n * 1000)} | "
                f"{_f(before and before * 1000) if before else '– (new)'} | "
                f"{_f(max(parents) / 1024) if parents else '–'} | "
                f"{_f(max(workers) / 1024) if workers else '– (none)'} |")
    return "\n".join(lines)


def _f(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"
