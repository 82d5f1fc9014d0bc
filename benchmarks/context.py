"""What every scenario gets from the runner, and how archiver itself is run.

archiver always runs as its own process, exactly as a user runs it
(``python -m archiver.cli run -c FILE --json``), so that its peak RSS and CPU are its own
and include its start-up.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .measure import BenchError, Measurement, run_process


@dataclass
class Context:
    """Sizes and repetitions for this invocation, a scratch directory, a logger."""

    workdir: Path
    reps: int = 3
    quick: bool = False
    large: bool = False
    smoke: bool = False
    log: Callable[[str], None] = print
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def size(self, default: int, quick: int, smoke: int) -> int:
        """Pick a size for the mode: ``--smoke`` < ``--quick`` < default."""
        return smoke if self.smoke else quick if self.quick else default

    def scratch(self, name: str) -> Path:
        path = self.workdir / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path


def archiver_config(emu, root: Path, state: Path, *, concurrency: int = 8,
                    transforms: str = "  - type: checksum\n    algorithms: [sha256]\n",
                    sinks: str | None = None, extra: str = "",
                    projects: list[str] | None = None, workers: int | None = None) -> str:
    """YAML for one archiver run against ``emu``; the key comes from $PLANGREP_API_KEY.
    ``workers``: ``workers: N`` (N worker processes of ``concurrency`` each; 1 or None:
    the run happens in the one ``archiver run`` process)."""
    if sinks is None:
        sinks = f"  - name: local\n    type: local\n    root: {root}\n"
    head = textwrap.dedent(f"""\
        source:
          type: plangrep
          base_url: {emu.base_url}
          api_key: ${{PLANGREP_API_KEY}}
        """) + (f"  projects: [{', '.join(projects)}]\n" if projects else "")
    return (head + ("transforms:\n" + transforms if transforms else "") + "sinks:\n" + sinks
            + f"state_dir: {state}\nconcurrency: {concurrency}\n"
            + (f"workers: {workers}\n" if workers is not None else "") + extra)


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_archiver(ctx: Context, config: Path, *, what: str, timeout: float,
                 env: dict[str, str] | None = None, expect_archived: int | None = None,
                 args: tuple[str, ...] = ("run",),
                 per_process_rss: bool = False) -> Measurement:
    """One ``archiver run`` as a subprocess; fails unless it exits 0 (and archived
    ``expect_archived`` jobs). The JSON summary lands in ``extra["report"]``;
    ``per_process_rss``: the peak RSS of the supervisor and of each worker process in
    ``extra["rss_parent_kib"]`` and ``extra["rss_workers_kib"]`` (see :func:`rss_split`)."""
    proc = run_process([ctx.python, "-m", "archiver.cli", *args, "-c", str(config), "--json"],
                       what=what, timeout=timeout, env=env or ctx.env,
                       per_process_rss=per_process_rss,
                       # smoke runs are so short that a forked worker can come and go
                       # within 0.2 s: sampled ten times as often, none is missed
                       rss_interval=0.02 if ctx.smoke else 0.2)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise BenchError(f"{what}: no JSON summary on stdout: {proc.stdout[-500:]!r}") from None
    if expect_archived is not None and len(report["archived"]) != expect_archived:
        raise BenchError(f"{what}: archived {len(report['archived'])} jobs, expected "
                         f"{expect_archived}: {json.dumps(report)[:800]}")
    proc.measurement.extra["report"] = report
    if per_process_rss:
        parent, workers = rss_split(proc.measurement.extra.pop("processes", []))
        proc.measurement.extra["rss_parent_kib"] = parent
        proc.measurement.extra["rss_workers_kib"] = workers
    return proc.measurement


def rss_split(processes: list[dict]) -> tuple[int | None, list[int]]:
    """(peak RSS of the ``archiver run`` process, peak RSS of each ``archiver worker``
    child), in KiB, from :class:`~benchmarks.measure.TreeSampler`'s samples."""
    parent, workers = None, []
    server_seen = False
    for p in sorted(processes, key=lambda p: p.get("started", 0)):
        argv = p["cmd"].split()
        if "archiver" not in p["cmd"] or "-m" not in argv or p.get("hwm_kib") is None:
            continue  # GNU time's `timeout`, a shell, a process gone before it was read
        if "archiver.workers.zygote" in argv:
            # the fork server, then the workers it forked (they keep its command line)
            if server_seen:
                workers.append(p["hwm_kib"])
            server_seen = True
        elif "worker" in argv:
            workers.append(p["hwm_kib"])
        elif "run" in argv:
            parent = max(parent or 0, p["hwm_kib"])
    return parent, workers


def client(ctx: Context, module: str, *args: str, what: str, timeout: float,
           env: dict[str, str] | None = None) -> tuple[Measurement, str]:
    """Run one of the baseline clients in ``benchmarks/clients`` as its own process."""
    proc = run_process([ctx.python, "-m", f"benchmarks.clients.{module}", *args], what=what,
                       timeout=timeout, env=env or ctx.env)
    return proc.measurement, proc.stdout


def set_aside(trash: Path, *paths: Path) -> None:
    """Move ``paths`` into ``trash`` (removed later, with :func:`remove`) instead of
    deleting them now. On ext4 without a journal (this machine's disk) every file created
    within minutes of a mass deletion makes the kernel scan past the deleted inodes
    (``recently_deleted``): deleting one run's thousands of files would slow whichever
    run comes next, whatever it is."""
    trash.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if p.exists():
            p.rename(trash / f"{len(os.listdir(trash))}-{p.name}")


def remove(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
