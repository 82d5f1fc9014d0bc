"""Merging a partial run into the published page (``python -m benchmarks --merge``).

A complete run takes ~30 minutes of a quiet machine. When only some scenarios are rerun,
``--merge`` rewrites ``docs/benchmarks.md`` with the new sections of those scenarios and
keeps, verbatim, the sections and target rows of the others from the page as it was, each
section headed by the run it comes from (date, command, mode, archiver commit). The page
is the only record of the earlier runs (their results.json is not kept), so it is parsed
here: sections are the ``## N. Title`` headings, target rows the ``| N | ...`` rows of
the targets table, and for the chart each variant row of a kept table is read back
(median/min/max seconds and the throughput, from which the work is recovered).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .harness import Row
from .measure import Measurement

MiB = 1 << 20
PROVENANCE = "*From the run of "
SECTION = re.compile(r"^## (\d+)\. ", re.M)
GENERATED = re.compile(r"^(?:Generated|Assembled) by `(?P<command>[^`]*)` on "
                       r"(?P<when>[^(]+?) \((?P<mode>[^,)]+?) mode", re.M)


@dataclass
class Kept:
    """One scenario kept from the previous page."""

    number: int
    title: str
    body: str                      # the section below its heading, provenance line first
    targets: list[str] = field(default_factory=list)   # its rows of the targets table
    rows: list[Row] = field(default_factory=list)      # for the chart

    @property
    def provenance(self) -> str:
        first = self.body.lstrip().splitlines()[0] if self.body.strip() else ""
        return first if first.startswith(PROVENANCE) else ""


@dataclass
class Page:
    sections: dict[int, Kept]
    machine: dict[str, str]
    when: str = "?"
    command: str = "?"
    mode: str = "?"


def provenance_line(when: str, command: str, mode: str, commit: str) -> str:
    return f"{PROVENANCE}{when} (`{command.strip()}`, {mode} mode, archiver {commit}).*"


def _cells(line: str) -> list[str]:
    """The cells of one Markdown table row (``\\|`` is a literal bar)."""
    inner = line.strip()[1:-1] if line.strip().startswith("|") else line
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def _number(text: str) -> float | None:
    text = text.replace(",", "").strip()
    try:
        return float(text)
    except ValueError:
        return None


def table_rows(body: str) -> list[Row]:
    """The variant rows of the first results table of a section (see results.HEADER)."""
    rows, inside = [], False
    for line in body.splitlines():
        if line.startswith("| variant | runs | median s"):
            inside = True
            continue
        if not inside:
            continue
        if not line.startswith("|"):
            if rows:
                break
            continue
        c = _cells(line)
        if len(c) < 9 or c[0].startswith("---"):
            continue
        label, role = c[0], "reference"
        if label.endswith("*(baseline)*"):
            label, role = label[:-len("*(baseline)*")].strip(), "baseline"
        if label.startswith("**") and label.endswith("**"):
            label, role = label[2:-2], "archiver"
        runs, med, lo, hi = _number(c[1]), _number(c[2]), _number(c[3]), _number(c[4])
        if None in (runs, med, lo, hi):
            continue
        work = unit = None
        m = re.match(r"([\d.,]+)\s+(.+)$", c[5])
        if m and _number(m.group(1)):
            unit = m.group(2)
            rate = _number(m.group(1))
            work = rate * med * (MiB if unit == "MiB/s" else 1)
        secs = [med] if runs == 1 else [lo, med, hi]
        rows.append(Row(label, role, [Measurement(s) for s in secs], work, unit))
    return rows


def parse_page(text: str) -> Page:
    """Sections, target rows, machine table and provenance of a published page."""
    g = GENERATED.search(text)
    page = Page({}, {})
    if g:
        page.when, page.command, page.mode = g["when"].strip(), g["command"], g["mode"]
    heads = list(SECTION.finditer(text))
    for h in heads:
        following = re.search(r"^## ", text[h.end():], re.M)
        end = h.end() + following.start() if following else len(text)
        title_line = text[h.start():].splitlines()[0]
        title = title_line[3:].strip()
        body = text[h.start() + len(title_line):end].strip("\n")
        number = int(h.group(1))
        page.sections[number] = Kept(number, title, body, rows=table_rows(body))
    in_targets = False
    for line in text.splitlines():
        if line.startswith("## Targets"):
            in_targets = True
            continue
        if in_targets and line.startswith("## "):
            break
        if in_targets and line.startswith("| ") and not line.startswith("| scenario"):
            c = _cells(line)
            n = c[0].split(".")[0].strip()
            if n.isdigit() and int(n) in page.sections:
                page.sections[int(n)].targets.append(line)
            else:  # "| 3. Title | – | failed |": the row of a failed scenario
                m = re.match(r"(\d+)\.", c[0])
                if m and int(m.group(1)) in page.sections:
                    page.sections[int(m.group(1))].targets.append(line)
    m = re.search(r"^## Machine and tools\n\n\| \| \|\n\|---\|---\|\n((?:\|.*\n?)*)", text,
                  re.M)
    if m:
        for line in m.group(1).splitlines():
            c = _cells(line)
            if len(c) >= 2:
                page.machine[c[0]] = c[1]
    for kept in page.sections.values():
        if not kept.provenance:
            line = provenance_line(page.when, page.command, page.mode,
                                   page.machine.get("archiver commit", "?"))
            kept.body = line + "\n\n" + kept.body
    return page
