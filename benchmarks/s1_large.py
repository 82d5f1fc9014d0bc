"""Scenario 1: one large artifact to local disk with SHA-256.

archiver (local sink, sha256) against the pipeline a user would write,
``curl -H "Authorization: Bearer …" URL | tee FILE | sha256sum``, and against
``curl -o /dev/null`` (what the emulator can serve: the ceiling of any client).
"""

from __future__ import annotations

import hashlib

from .context import Context, archiver_config, remove, run_archiver, write_config
from .harness import ScenarioResult, Target, Variant, alternate
from .measure import BenchError, GiB, MiB, run_process
from .servers import emulator

KEY = "large"
TITLE = "1. One large artifact to local disk, with SHA-256"
PATH = "large/artifact.bin"


def _human(n: int) -> str:
    return f"{n // GiB} GiB" if n % GiB == 0 else f"{n // MiB} MiB"


def curl_ceiling(ctx: Context, url: str, size: int, label: str, timeout: float) -> Variant:
    """``curl -o /dev/null``: how fast the emulator serves this artifact to a C client."""
    def run(rep: int):
        cmd = (f'curl -sS --fail -o /dev/null -H "Authorization: Bearer $PLANGREP_API_KEY" '
               f'"{url}"')
        return run_process(cmd, what=label, timeout=timeout, env=ctx.env).measurement
    return Variant(label, run, role="reference", work=size, unit="MiB/s",
                   note="the emulator's ceiling: no client can be faster")


def expected_sha256(emu, job_id: str, path: str) -> str:
    h = hashlib.sha256()
    for chunk in emu.iter_artifact_bytes(job_id, path, 4 * MiB):
        h.update(chunk)
    return h.hexdigest()


def _variants(ctx: Context, emu, job_id: str, size: int, tag: str, fsync_row: bool):
    url = emu.artifact_url(job_id, PATH)
    want = expected_sha256(emu, job_id, PATH)
    work = ctx.scratch(f"s1-{tag}")
    timeout = 120 + size / (20 * MiB)
    out = work / "curl.bin"
    base_label = f"{tag}: curl | tee | sha256sum"

    def baseline(rep: int):
        cmd = (f'curl -sS --fail -H "Authorization: Bearer $PLANGREP_API_KEY" "{url}" '
               f'| tee "{out}" | sha256sum')
        proc = run_process(cmd, what=base_label, timeout=timeout, env=ctx.env)
        got = proc.stdout.split()[0] if proc.stdout.strip() else ""
        if got != want or out.stat().st_size != size:
            raise BenchError(f"{base_label}: wrong output (sha256 {got}, "
                             f"{out.stat().st_size} bytes)")
        return proc.measurement

    def archiver(fsync: bool, workers: int | None = None):
        name = f"{fsync}-{workers}"
        root, state = work / f"archive-{name}", work / f"state-{name}"
        sink = (f"  - name: local\n    type: local\n    root: {root}\n"
                + ("" if fsync else "    fsync: false\n"))
        cfg = write_config(work / f"archiver-{name}.yaml",
                           archiver_config(emu, root, state, sinks=sink, workers=workers))
        label = workers_label(tag, workers) if workers else (
            f"{tag}: archiver" + ("" if fsync else " (local sink fsync: false)"))

        def run(rep: int):
            m = run_archiver(ctx, cfg, what=label, timeout=timeout, expect_archived=1,
                             per_process_rss=bool(workers))
            stored = root / "proj_large" / job_id / "data" / "artifacts" / PATH
            if stored.stat().st_size != size:
                raise BenchError(f"{label}: stored {stored.stat().st_size} bytes, not {size}")
            return m
        note = "" if fsync else "durability off: shows what fsync costs"
        if workers:
            note = ("`workers: 2` with one job: the `archiver run` process lists, queues and "
                    "supervises, one `archiver worker` child archives the artifact; peak "
                    "RSS is the largest of the two (each apart below)")
        return Variant(label, run, work=size, unit="MiB/s", vs=(base_label,),
                       reset=lambda: remove(root, state), note=note)

    variants = [Variant(base_label, baseline, role="baseline", work=size, unit="MiB/s",
                        reset=lambda: remove(out)),
                archiver(True)]
    if fsync_row:
        variants.append(archiver(False))
        variants.append(archiver(True, workers=2))
    variants.append(curl_ceiling(ctx, url, size, f"{tag}: curl -o /dev/null (emulator ceiling)",
                                 timeout))
    return variants


def workers_label(tag: str, workers: int) -> str:
    return f"{tag}: archiver, workers: {workers} (supervisor + worker process)"


def run(ctx: Context) -> ScenarioResult:
    res = ScenarioResult(KEY, TITLE, (
        "A single artifact streamed from the emulator to the local sink with a SHA-256, "
        "against `curl -H \"Authorization: Bearer …\" URL | tee FILE | sha256sum`. archiver "
        "also fsyncs the file and its directory, writes job.json, result.json, BagIt tag "
        "files and its SQLite ledger; the pipeline does none of that. Peak RSS is the largest single "
        "process (for the pipeline: curl, tee or sha256sum)."))
    sizes = [ctx.size(GiB, 256 * MiB, 4 * MiB)]
    if ctx.large and not ctx.smoke:
        sizes.append(10 * GiB)
    with emulator() as emu:
        rows = []
        for i, size in enumerate(sizes):
            job = emu.add_job("proj_large", artifacts=[
                emu_spec(PATH, size)], shape="flat")
            tag = _human(size)
            variants = _variants(ctx, emu, job["id"], size, tag, fsync_row=i == 0)
            reps = 1 if size > GiB and not ctx.quick else ctx.reps
            ctx.log(f" {tag}: {len(variants)} variants x {reps} runs")
            rows += alternate(variants, reps, ctx.log)
        res.rows = rows
    for size in sizes:
        tag = _human(size)
        arch = res.row(f"{tag}: archiver")
        ratio = res.ratio(arch)
        res.targets.append(Target(f"{tag}: ≥ 0.85× the pipeline's throughput",
                                  ratio is not None and ratio >= 0.85, f"{ratio:.2f}×"))
        rss = arch.peak_rss_kib / 1024
        res.targets.append(Target(f"{tag}: archiver peak RSS ≤ 100 MiB", rss <= 100,
                                  f"{rss:.0f} MiB"))
        if size == sizes[0]:
            res.targets.append(_workers_rss(res, workers_label(tag, 2)))
        ceiling = res.row(f"{tag}: curl -o /dev/null (emulator ceiling)")
        fastest = max(r.rate(r.median) for r in res.rows
                      if r.label.startswith(tag) and r.role != "reference")
        top = ceiling.rate(ceiling.median)
        res.targets.append(Target(f"{tag}: the emulator is not the bottleneck",
                                  top > fastest, f"serves {top:.0f} MiB/s to curl; fastest "
                                  f"client {fastest:.0f} MiB/s"))
    res.notes.append(_hash_speeds(ctx))
    return res


def _workers_rss(res: ScenarioResult, label: str) -> Target:
    """≤ 100 MiB for every single process of a run with worker processes: GNU time's
    number is the largest one; the sampled peaks tell the supervisor and worker apart."""
    row = res.row(label)
    rss = (row.peak_rss_kib or 0) / 1024
    parents = [k for k in row.extra("rss_parent_kib") if k]
    workers = [k for ks in row.extra("rss_workers_kib") for k in ks]
    apart = (f"; sampled: `archiver run` {max(parents) / 1024:.0f} MiB, largest worker "
             f"{max(workers) / 1024:.0f} MiB" if parents and workers else "")
    return Target(f"{label.split(':')[0]}, workers: 2: peak RSS ≤ 100 MiB per process "
                  "(largest single process)", rss <= 100, f"{rss:.0f} MiB{apart}")


def _hash_speeds(ctx: Context) -> str:
    """Measured, not assumed: how fast each side hashes on this machine."""
    n = ctx.size(256 * MiB, 256 * MiB, 4 * MiB)
    tool = run_process(f"head -c {n} /dev/zero | sha256sum", what="sha256sum speed",
                       timeout=300, env=ctx.env).measurement.seconds
    py = run_process([ctx.python, "-c", (
        "import hashlib, time; b = bytes(1 << 20); h = hashlib.sha256(); t = time.perf_counter()\n"
        f"for _ in range({n >> 20}): h.update(b)\n"
        "print(time.perf_counter() - t)")], what="hashlib speed", timeout=300, env=ctx.env)
    py_s = float(py.stdout.strip())
    return (f"Hashing speed on this machine ({n // MiB} MiB, one run each): coreutils "
            f"`sha256sum` {n / MiB / tool:.0f} MiB/s (pipe from `head` included), Python "
            f"`hashlib.sha256` (OpenSSL) {n / MiB / py_s:.0f} MiB/s. The pipeline is bounded "
            "by `sha256sum`, archiver by doing receive, hash and write one after the other "
            "in one thread per artifact.")


def emu_spec(path: str, size: int):
    from archiver.testing.emulator import ArtifactSpec

    return ArtifactSpec(path, size=size, where="result")
