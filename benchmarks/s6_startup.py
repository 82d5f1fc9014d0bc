"""Scenario 6: start-up, ``archiver --help`` wall time (target ≤ 0.3 s), and what it imports
(``python -X importtime``)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .context import Context
from .harness import ScenarioResult, Target, Variant, alternate
from .measure import run_process

KEY = "startup"
TITLE = "6. Start-up: archiver --help"
TARGET = 0.3


def archiver_command(python: str) -> list[str]:
    """The console script users run, next to this interpreter if it is there."""
    script = Path(python).parent / "archiver"
    if script.exists():
        return [str(script)]
    found = shutil.which("archiver")
    return [found] if found else [python, "-m", "archiver.cli"]


def importtime(ctx: Context, env: dict[str, str]
               ) -> tuple[list[tuple[str, float, float]], float, list[str]]:
    """Top-level imports of ``archiver --help`` as (module, self s, cumulative s), the
    total import time, and every module imported."""
    code = ("import sys; from archiver.cli import main; sys.argv = ['archiver', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass")
    proc = run_process([ctx.python, "-X", "importtime", "-c", code], what="importtime",
                       timeout=60, env=env)
    rows, total, names = [], 0.0, []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line[len("import time:"):].split("|")
        try:
            own, cum = int(parts[0]) / 1e6, int(parts[1]) / 1e6
        except ValueError:
            continue  # the header line
        total += own
        name = parts[2].rstrip()
        names.append(name.strip())
        if not name.startswith("  ") and name.strip():
            rows.append((name.strip(), own, cum))
    rows.sort(key=lambda r: -r[2])
    return rows, total, names


def run(ctx: Context) -> ScenarioResult:
    reps = 3 if ctx.smoke else max(ctx.reps, 5 if ctx.quick else 10)
    res = ScenarioResult(KEY, TITLE, (
        f"Wall time of `archiver --help` (the console script), {reps} runs each, against "
        "the bare interpreter start-up (`python -c pass`), and with entry-point plugins "
        "switched off (`ARCHIVER_LOAD_ENTRY_POINTS=0`) to show what the installed S3/GCS "
        "plugins add to it."))
    cmd = archiver_command(ctx.python)
    no_eps = dict(ctx.env, ARCHIVER_LOAD_ENTRY_POINTS="0")

    def timed(argv, label, env=None):
        def run(rep: int):
            return run_process(argv, what=label, timeout=60, env=env or ctx.env).measurement
        return run

    floor_l = "python -c pass"
    help_l = "archiver --help"
    variants = [
        Variant(floor_l, timed([ctx.python, "-c", "pass"], floor_l), role="reference"),
        Variant(help_l, timed([*cmd, "--help"], help_l), vs=(floor_l,)),
        Variant(f"{help_l} (ARCHIVER_LOAD_ENTRY_POINTS=0)",
                timed([*cmd, "--help"], help_l, no_eps), vs=(floor_l,)),
    ]
    res.rows = alternate(variants, reps, ctx.log)
    med = res.row(help_l).median
    res.targets.append(Target(f"`archiver --help` ≤ {TARGET} s", med <= TARGET,
                              f"median {med:.3f} s"))
    rows, total, names = importtime(ctx, ctx.env)
    top = rows[:15]
    lines = [f"`python -X importtime` of `archiver --help`: {total:.3f} s of imports in all "
             "(one run, with the import-time instrumentation overhead). Top-level imports by "
             "cumulative time:", "", "| module | self ms | cumulative ms |",
             "|---|---:|---:|"]
    lines += [f"| `{n}` | {own * 1000:.1f} | {cum * 1000:.1f} |" for n, own, cum in top]
    res.tables.append("\n".join(lines))
    plugin_modules = sorted({n for n in names if n.startswith(
        ("archiver_", "archiver.default_plugins", "archiver.plugins"))})
    res.notes.append("Plugin modules imported by `--help`: " + (
        ", ".join(f"`{m}`" for m in plugin_modules) if plugin_modules else "none") + ".")
    heavy = dict.fromkeys(n.split(".")[0] for n, _, _ in rows if n.split(".")[0] in (
        "requests", "urllib3", "boto3", "botocore", "google", "sqlite3", "yaml", "rich",
        "pydantic", "zstandard", "tenacity"))
    if heavy:
        res.notes.append("Imported by `--help` although no command runs: "
                         + ", ".join(f"`{h}`" for h in heavy) + ".")
    res.notes.append(f"Interpreter: `{sys.executable}`; command: `{' '.join(cmd)} --help`. "
                     "archiver, its plugins and the clients are byte-compiled before the run "
                     "(`compileall`, as an installed package is), and no child runs with "
                     "`PYTHONDONTWRITEBYTECODE`.")
    return res
