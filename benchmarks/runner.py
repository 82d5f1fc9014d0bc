"""``python -m benchmarks``: run the scenarios and write docs/benchmarks.md + a chart.

A complete run (no ``--only``, no ``--smoke``) writes ``docs/benchmarks.md``,
``docs/img/benchmarks.png`` and ``benchmarks/out/results.json``; partial runs write into
``benchmarks/out/`` unless ``--output`` says otherwise, so they never overwrite the
published page by accident. ``--merge`` publishes a partial run: the scenarios rerun
replace theirs in ``docs/benchmarks.md`` and the others keep their published sections,
each marked with the run it comes from (:mod:`benchmarks.merge`); with ``--from-json`` it
merges the results of an earlier partial run without measuring anything.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .context import Context
from .harness import ScenarioResult
from .measure import BenchError, loadavg, machine_info

ROOT = Path(__file__).resolve().parent.parent

# (name for --only, module) in the order they run and appear.
SCENARIOS = (
    ("large", "s1_large"),
    ("fanout", "s2_fanout"),
    ("small", "s3_small"),
    ("rerun", "s4_rerun"),
    ("decompress", "s5_decompress"),
    ("startup", "s6_startup"),
    ("scaleout", "s7_scaleout"),
    ("celery", "s8_celery"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [n for n, _ in SCENARIOS]
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=(
        "Benchmark archiver against curl/sha256sum, a requests loop, rclone, boto3 and "
        "google-cloud-storage. Servers run on 127.0.0.1 only."))
    p.add_argument("--quick", action="store_true",
                   help="1 repetition and smaller sizes (a couple of minutes)")
    p.add_argument("--large", action="store_true",
                   help="also the 10 GiB artifact of scenario 1 (needs ~12 GiB of free disk) "
                        "and rclone with one process per URL on every URL")
    p.add_argument("--only", action="append", metavar="NAME",
                   help=f"run only these scenarios (repeat or comma-separate): "
                        f"{', '.join(names)} (or 1-{len(names)})")
    p.add_argument("--smoke", action="store_true",
                   help="minimal sizes, 1 repetition: proves every scenario executes "
                        "(numbers meaningless)")
    p.add_argument("--reps", type=int, help="repetitions per variant (default 3; 1 with "
                                            "--quick or --smoke)")
    p.add_argument("--output", type=Path, help="directory for the Markdown page, chart and "
                   "JSON (default: docs/ for a complete run, benchmarks/out/ otherwise)")
    p.add_argument("--workdir", type=Path, help="scratch directory (default: a new temporary "
                   "directory, removed at the end)")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG (no matplotlib)")
    p.add_argument("--from-json", type=Path, metavar="RESULTS",
                   help="measure nothing: re-render the page and chart from a results.json "
                        "(into --output, default benchmarks/out/, or docs/ with --merge)")
    p.add_argument("--merge", action="store_true",
                   help="publish a partial run: replace the sections of the scenarios run "
                        "in the page of --output (default docs/), keep the others as they "
                        "are, each marked with the run it comes from")
    args = p.parse_args(argv)
    if args.merge and args.smoke:
        p.error("--merge publishes results: not with --smoke (its numbers mean nothing)")
    chosen = []
    for item in args.only or []:
        for name in filter(None, (s.strip() for s in item.split(","))):
            if name.isdigit() and 1 <= int(name) <= len(SCENARIOS):
                name = SCENARIOS[int(name) - 1][0]
            if name not in names:
                p.error(f"unknown scenario {name!r}; choose from {', '.join(names)}")
            chosen.append(name)
    args.chosen = [n for n in names if not chosen or n in chosen]
    if args.reps is None:
        args.reps = 1 if (args.quick or args.smoke) else 3
    if args.reps < 1:
        p.error("--reps must be at least 1")
    return args


def _env() -> dict[str, str]:
    from archiver.testing.emulator import DEFAULT_API_KEY

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PLANGREP_API_KEY"] = DEFAULT_API_KEY
    for var in ("ARCHIVER_PLUGINS", "ARCHIVER_DISABLE_PLUGINS", "ARCHIVER_LOAD_ENTRY_POINTS",
                # an installed package has its bytecode compiled: measure that state
                "PYTHONDONTWRITEBYTECODE"):
        env.pop(var, None)
    return env


def compile_bytecode(ctx: Context) -> None:
    """Compile archiver, the plugins and the clients once, as ``pip install`` would, so no
    measured run pays for compiling source (or races to write the cache)."""
    from .measure import run_process

    dirs = [str(ROOT / "archiver"), str(ROOT / "benchmarks")]
    dirs += [str(p) for p in (ROOT / "plugins").glob("*/archiver_*") if p.is_dir()]
    run_process([ctx.python, "-m", "compileall", "-q", *dirs], what="compileall",
                timeout=300, env=ctx.env, check=False)


def run_one(name: str, module: str, ctx: Context) -> ScenarioResult:
    mod = importlib.import_module(f".{module}", __package__)
    before = loadavg()
    t0 = time.monotonic()
    try:
        res = mod.run(ctx)
    except BenchError as exc:
        res = ScenarioResult(name, mod.TITLE, status="failed", notes=[f"Failed: {exc}"])
    except Exception:  # noqa: BLE001 - a bug in one scenario must not cost the others
        res = ScenarioResult(name, mod.TITLE, status="failed",
                             notes=["Failed with a benchmark bug:\n\n```\n"
                                    + traceback.format_exc()[-3000:] + "```"])
    res.seconds = time.monotonic() - t0
    res.load = {"before": before, "after": loadavg()}
    return res


def rerender(args: argparse.Namespace) -> int:
    from .results import load_results, write_results

    data, results = load_results(args.from_json)
    out_dir = args.output or ROOT / ("docs" if args.merge else "benchmarks/out")
    for path in write_results(results, out_dir, info=data["info"], mode=data["mode"],
                              reps=data["reps"], total_seconds=data["total_seconds"],
                              chart=not args.no_chart, command=data.get(
                                  "command", "python -m benchmarks"),
                              merge=args.merge, when=data.get("when")):
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return rerender(args)
    complete = set(args.chosen) == {n for n, _ in SCENARIOS} and not args.smoke
    out_dir = args.output or (ROOT / "docs" if complete or args.merge
                              else ROOT / "benchmarks" / "out")
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="archiver-bench-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, flush=True)
    ctx = Context(workdir=workdir, reps=args.reps, quick=args.quick, large=args.large,
                  smoke=args.smoke, log=log, env=_env())
    mode = "smoke" if args.smoke else "quick" if args.quick else "default"
    if args.large:
        mode += " + large"
    info = machine_info(str(ROOT))
    log(f"archiver benchmarks ({mode}, {args.reps} repetition(s)); load average "
        f"{'/'.join(f'{x:.2f}' for x in loadavg())}; scratch {workdir}")
    results: list[ScenarioResult] = []
    t0 = time.monotonic()
    compile_bytecode(ctx)
    try:
        for name, module in SCENARIOS:
            if name not in args.chosen:
                continue
            log(f"== {name}")
            res = run_one(name, module, ctx)
            log(f"== {name}: {res.status} in {res.seconds:.0f} s")
            if res.status != "ok":
                log("   " + "\n   ".join(res.notes)[:2000])
            results.append(res)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    from .results import write_results

    written = write_results(results, out_dir, info=info, mode=mode, reps=args.reps,
                            total_seconds=time.monotonic() - t0, chart=not args.no_chart,
                            command="python -m benchmarks " + " ".join(
                                sys.argv[1:] if argv is None else argv),
                            merge=args.merge and not complete)
    for path in written:
        log(f"wrote {path}")
    return 0 if all(r.status != "failed" for r in results) else 1
