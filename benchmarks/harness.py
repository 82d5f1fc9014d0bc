"""Variants of a scenario, run alternately, and what a scenario reports.

A scenario builds :class:`Variant` objects (a baseline, archiver, references) and hands
them to :func:`alternate`, which runs repetition 1 in order A B C, repetition 2 in order
C B A, and so on, so that drift in the machine's load hits every variant alike. Between
two runs the variant's ``reset`` removes its output (untimed) and dirty pages are flushed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .measure import Measurement, loadavg, settle


@dataclass
class Variant:
    """One thing to measure. ``run(rep)`` performs one timed run and returns its
    measurement; ``reset()`` cleans up after it (not timed)."""

    label: str
    run: Callable[[int], Measurement]
    role: str = "archiver"            # "baseline" | "archiver" | "reference"
    work: float | None = None         # units of work of one run (bytes, artifacts)
    unit: str | None = None           # "MiB/s", "artifacts/s"; None: seconds only
    vs: tuple[str, ...] = ()          # labels of the rows it is compared to
    reps: int | None = None           # fewer repetitions for a very slow variant
    reset: Callable[[], None] | None = None
    note: str = ""


@dataclass
class Row:
    """Measured runs of one variant."""

    label: str
    role: str
    runs: list[Measurement]
    work: float | None = None
    unit: str | None = None
    vs: tuple[str, ...] = ()
    note: str = ""

    @property
    def seconds(self) -> list[float]:
        return [m.seconds for m in self.runs]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def rate(self, seconds: float) -> float | None:
        """Throughput for one duration, in ``unit`` (MiB/s from bytes)."""
        if self.work is None or not self.unit or seconds <= 0:
            return None
        work = self.work / (1 << 20) if self.unit == "MiB/s" else self.work
        return work / seconds

    @property
    def peak_rss_kib(self) -> int | None:
        values = [m.rss_kib for m in self.runs if m.rss_kib is not None]
        return max(values) if values else None

    def extra(self, key: str) -> list[Any]:
        return [m.extra[key] for m in self.runs if key in m.extra]


@dataclass
class Target:
    """A goal from the issue and whether this run met it (None: not measurable here)."""

    text: str
    met: bool | None
    detail: str = ""


@dataclass
class ScenarioResult:
    key: str
    title: str
    description: str = ""
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)   # extra Markdown tables
    status: str = "ok"                                 # "ok" | "skipped" | "failed"
    load: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def row(self, label: str) -> Row:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(label)

    def ratio(self, row: Row, other: str | None = None) -> float | None:
        """Speed of ``row`` relative to row ``other`` (default: its first ``vs`` row;
        > 1: faster), from medians: throughputs when both rows have work, else inverse
        times."""
        other = other or (row.vs[0] if row.vs else None)
        if other is None:
            return None
        base = self.row(other)
        a, b = row.rate(row.median), base.rate(base.median)
        if a is not None and b is not None and b > 0:
            return a / b
        return base.median / row.median if row.median > 0 else None


def alternate(variants: list[Variant], reps: int, log: Callable[[str], None]) -> list[Row]:
    """Run every variant ``reps`` times (or its own ``reps``), interleaved; returns rows in
    the order given."""
    runs: dict[str, list[Measurement]] = {v.label: [] for v in variants}
    for rep in range(reps):
        order = variants if rep % 2 == 0 else list(reversed(variants))
        for v in order:
            if v.reps is not None and rep >= v.reps:
                continue
            settle()
            load = loadavg()[0]
            m = v.run(rep)
            try:
                if v.reset:
                    v.reset()
            finally:
                m.extra.setdefault("load1", load)
            runs[v.label].append(m)
            rss = f", peak RSS {m.rss_kib / 1024:.0f} MiB" if m.rss_kib else ""
            log(f"  [{rep + 1}/{v.reps or reps}] {v.label}: {m.seconds:.3f} s{rss}")
    return [Row(v.label, v.role, runs[v.label], v.work, v.unit, v.vs, v.note)
            for v in variants]
