"""Scenario 5: 1 GiB gzip and zstd artifacts decompressed to local disk.

archiver (``decompress`` transform: SHA-256 of the bytes as received *and* as stored)
against ``curl | gzip -dc | tee FILE | sha256sum`` (and ``zstd -dc``). Peak RSS at full
size and at 1/8 of it shows whether memory stays flat.

The content is JSON-lines text (about 4.5:1). The emulator's own ``compress`` option
compresses while serving, which would make it the bottleneck, so the compressed bytes are
made here once: a 16 MiB text corpus compressed into one gzip member / zstd frame, repeated
(concatenated members and frames are valid streams, decoded by every tool here) and served
from memory as the artifact's bytes.
"""

from __future__ import annotations

import hashlib
import random
import zlib

from .context import Context, archiver_config, remove, run_archiver, write_config
from .harness import ScenarioResult, Target, Variant, alternate
from .measure import BenchError, GiB, MiB, run_process
from .s1_large import curl_ceiling
from .servers import emulator

KEY = "decompress"
TITLE = "5. Decompression to local disk"
CORPUS = 16 * MiB
WORDS = [w.encode() for w in ["wall", "door", "window", "beam", "column", "slab", "stair", "roof", "footing", "duct", "pipe", "valve", "panel", "conduit", "fixture", "sprinkler", "hatch", "ramp", "curb", "joist", "truss", "lintel", "parapet", "mullion"]]
KINDS = [b"A", b"S", b"M", b"E", b"P", b"FP"]
FORMATS = {"gzip": (".gz", "gzip -dc"), "zstd": (".zst", "zstd -dcq")}


def corpus(size: int, seed: str = "s5") -> bytes:
    """Deterministic JSON-lines text, like an extracted-data artifact."""
    rng = random.Random(seed)
    ri, ch = rng.randrange, rng.choice
    out = bytearray()
    while len(out) < size:
        out += (b'{"page": %d, "sheet": "%s-%d.%02d", "label": "%s %s", "bbox": [%d, %d, %d, '
                b'%d], "confidence": 0.%04d}\n' % (
                    ri(1, 500), ch(KINDS), ri(100, 999), ri(0, 99), ch(WORDS), ch(WORDS),
                    ri(0, 9000), ri(0, 6000), ri(10, 900), ri(10, 900), ri(0, 10000)))
    return bytes(out[:size])


def compress(fmt: str, data: bytes) -> bytes:
    if fmt == "gzip":
        c = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip -6, the default level
        return c.compress(data) + c.flush()
    import zstandard

    return zstandard.ZstdCompressor(level=3).compress(data)  # zstd's default level


def run(ctx: Context) -> ScenarioResult:
    size = ctx.size(GiB, 256 * MiB, 4 * MiB)
    unit = min(CORPUS, size)
    small = max(unit, size // 8)
    text = corpus(unit)
    reps = {s: s // unit for s in (size, small)}
    digests = {}
    for s, k in reps.items():
        h = hashlib.sha256()
        for _ in range(k):
            h.update(text)
        digests[s] = h.hexdigest()
    res = ScenarioResult(KEY, TITLE, (
        f"A {size // MiB} MiB JSON-lines artifact, served gzip- and zstd-compressed, "
        "decompressed into the local sink by the `decompress` transform (archiver hashes "
        "the compressed bytes as received and the plain bytes as stored, and fsyncs) "
        "against `curl | gzip -dc | tee FILE | sha256sum` (`zstd -dcq` for zstd), which "
        "hashes the plain bytes only. Throughput counts plain (output) bytes."
        + (f" The {small // MiB} MiB rows show whether peak RSS grows with the size."
           if small != size else "")))
    work = ctx.scratch("s5")
    sizes_note = []
    with emulator() as emu:
        for fmt in FORMATS:
            member = compress(fmt, text)
            sizes_note.append(f"{fmt}: {size // MiB} MiB → {len(member) * reps[size] / MiB:.0f} "
                              f"MiB served ({len(text) / len(member):.1f}:1)")
            variants = _variants(ctx, emu, work, fmt, member, reps, size, digests[size])
            ctx.log(f" {fmt}: {len(variants)} variants x {ctx.reps} runs")
            res.rows += alternate(variants, ctx.reps, ctx.log)
    res.notes.append("Sizes: " + "; ".join(sizes_note) + ".")
    for fmt, (_, tool) in FORMATS.items():
        arch = res.row(f"{fmt}: archiver")
        ceiling = res.row(f"{fmt}: curl -o /dev/null (emulator ceiling, plain-byte rate)")
        base = res.row(f"{fmt}: curl | {tool.split()[0]} -dc | tee | sha256sum")
        fastest = max(r.rate(r.median) for r in (arch, base))
        res.targets.append(Target(f"{fmt}: the emulator is not the bottleneck",
                                  ceiling.rate(ceiling.median) > fastest,
                                  f"{ceiling.rate(ceiling.median):.0f} vs {fastest:.0f} MiB/s"))
        ratio = res.ratio(arch)
        res.targets.append(Target(f"{fmt}: throughput vs the pipeline (information)", None,
                                  f"{ratio:.2f}×"))
        if small != size:
            big, little = arch.peak_rss_kib / 1024, res.row(
                f"{fmt}: archiver, {small // MiB} MiB").peak_rss_kib / 1024
            res.targets.append(Target(
                f"{fmt}: flat RSS (peak at {size // MiB} MiB ≤ peak at {small // MiB} MiB "
                "+ 10 %)", big <= little * 1.1, f"{big:.0f} vs {little:.0f} MiB"))
    return res


def _variants(ctx: Context, emu, work, fmt: str, member: bytes, reps: dict[int, int],
              size: int, digest: str) -> list[Variant]:
    """Baseline, archiver at each size, and the emulator ceiling for one format."""
    from archiver.testing.emulator import ArtifactSpec

    suffix, tool = FORMATS[fmt]
    specs = {s: ArtifactSpec(f"data/{fmt}-{s // MiB}MiB.jsonl{suffix}", data=member * k,
                             where="result") for s, k in reps.items()}
    jobs = {s: emu.add_job(f"proj_{fmt}_{s // MiB}", artifacts=[spec], shape="flat")["id"]
            for s, spec in specs.items()}
    url = emu.artifact_url(jobs[size], specs[size].path)
    out = work / f"{fmt}.out"
    timeout = 120 + size / (10 * MiB)
    base_l = f"{fmt}: curl | {tool.split()[0]} -dc | tee | sha256sum"

    def baseline(rep: int):
        cmd = (f'curl -sS --fail -H "Authorization: Bearer $PLANGREP_API_KEY" "{url}" '
               f'| {tool} | tee "{out}" | sha256sum')
        proc = run_process(cmd, what=base_l, timeout=timeout, env=ctx.env)
        if proc.stdout.split()[:1] != [digest]:
            raise BenchError(f"{base_l}: wrong sha256 {proc.stdout.strip()}")
        return proc.measurement

    def archiver(s: int) -> Variant:
        tag, project = f"{fmt}-{s // MiB}", f"proj_{fmt}_{s // MiB}"
        root, state = work / f"archive-{tag}", work / f"state-{tag}"
        cfg = write_config(work / f"{tag}.yaml", archiver_config(
            emu, root, state, transforms="  - type: decompress\n", projects=[project]))
        label = f"{fmt}: archiver" + ("" if s == size else f", {s // MiB} MiB")
        stored = (root / project / jobs[s] / "data" / "artifacts"
                  / specs[s].path.removesuffix(suffix))

        def run(rep: int):
            m = run_archiver(ctx, cfg, what=label, timeout=timeout, expect_archived=1)
            if stored.stat().st_size != s:
                raise BenchError(f"{label}: stored {stored.stat().st_size} bytes")
            return m
        return Variant(label, run, work=s, unit="MiB/s", vs=(base_l,) if s == size else (),
                       reset=lambda: remove(root, state))

    variants = [Variant(base_l, baseline, role="baseline", work=size, unit="MiB/s",
                        reset=lambda: remove(out)),
                archiver(size)]
    if len(reps) > 1:
        variants.append(archiver(min(reps)))
    variants.append(curl_ceiling(ctx, url, size, f"{fmt}: curl -o /dev/null (emulator "
                                 "ceiling, plain-byte rate)", timeout))
    return variants
