"""The tamper-evident audit log: one canonical JSON line per record, hash-chained.

Chain rule (checkable with nothing but a JSON parser and SHA-256):

* a record is one line of canonical JSON (``sort_keys``, separators ``,`` and ``:``,
  ASCII only) and its hash is the SHA-256 (hex) of that line's UTF-8 bytes, without the
  line feed;
* ``prev`` is the hash of the previous record of the whole ledger (``0`` × 64 for the
  first), and ``seq`` counts records from 1 without gaps;
* ``job_prev`` is the hash of the previous record *of the same job* (``0`` × 64 for the
  job's first), so the per-job export ``audit.jsonl`` in each bag is a chain of its own.

Editing a record changes its hash, so the next record's ``prev`` no longer matches;
removing one leaves a gap in ``seq`` and a broken link; reordering breaks both. The
ledger also keeps each record's hash beside it, which catches an edit of the very last
record. Truncating the tail is what a chain alone cannot show: the exported
``audit.jsonl`` files (in write-once storage) anchor it, and ``archiver audit verify``
checks that every exported record is still in the ledger, unchanged.

The rules themselves (record format, hashing, chain and export verification) are part
of the ledger core, :mod:`archiver.ledger.chainrules`, and re-exported here; this module
adds ``archiver audit verify``: the ledger chain and every exported ``audit.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..ledger.chainrules import (  # noqa: F401 - re-exported: the chain rules' old home
    FIELDS,
    GENESIS,
    RETENTION_KEYS,
    Break,
    _parse,
    canonical,
    line_hash,
    make_line,
    retention_facts,
    verify_chain,
    verify_export,
)


@dataclass
class AuditReport:
    """``archiver audit verify``: the ledger chain and every exported ``audit.jsonl``."""

    checked: list[dict[str, Any]]          # {"where", "records", "broken"}
    problems: list[str]                    # exports that could not be read

    @property
    def breaks(self) -> list[str]:
        return [c["broken"] for c in self.checked if c["broken"]]

    @property
    def exit_code(self) -> int:
        return 1 if self.breaks else (3 if self.problems else 0)

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "problems": self.problems,
                "exit_code": self.exit_code}


def _job_view(ledger, job_id: str) -> tuple[dict[int, str], list[int]]:
    rows = list(ledger.audit_rows(job_id))
    return {r.seq: r.line for r in rows}, [r.seq for r in rows]


def check_audit(ledger, sinks: dict, *, job_id: str | None = None, files=(),
                exports: bool = True) -> AuditReport:
    """Verify the ledger's chain, the ``audit.jsonl`` of every bag the ledger recorded
    (read back from its sink, ``job_id`` only if given) and any exported ``files``."""
    from ..errors import ArchiverError
    from .storage import read_small

    report = AuditReport([], [])
    brk, n = verify_chain(ledger.audit_rows())
    where = getattr(ledger, "location", None) or getattr(ledger, "path", "")
    report.checked.append({"where": f"ledger {where}".strip(),
                           "records": n, "broken": str(brk) if brk else None})
    for bag in (ledger.bag_files(job_id) if exports else []):
        if bag.name != "audit.jsonl" or bag.sink not in sinks:
            continue
        sink = sinks[bag.sink]
        where = sink.describe(bag.key)
        try:
            data = read_small(sink, bag.key)
        except (ArchiverError, OSError) as exc:
            report.problems.append(f"sink {sink.label}: {where}: cannot be read: {exc}")
            continue
        if data is None:
            report.checked.append({"where": where, "records": 0, "broken": f"{where}: the "
                                   "exported audit log is missing (removed)"})
            continue
        lines, seqs = _job_view(ledger, bag.job_id)
        brk, n = verify_export(data.decode("utf-8", "replace"), lines, where, seqs,
                               upto=bag.digests.get("last_seq"))
        report.checked.append({"where": where, "records": n, "broken": str(brk) if brk else None})
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        first = _parse(text.split("\n", 1)[0])
        job = first["job_id"] if first else None
        lines, seqs = _job_view(ledger, job) if job else ({}, [])
        brk, n = verify_export(text, lines, str(path), seqs)
        report.checked.append({"where": str(path), "records": n,
                               "broken": str(brk) if brk else None})
    return report
