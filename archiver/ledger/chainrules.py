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

This module is pure (stdlib only) and part of the ledger core: every backend appends
records through :mod:`archiver.ledger.auditchain`, and :mod:`archiver.compliance.audit`
(``archiver audit verify``) checks them with the functions here. The line format is
fixed: existing chains must keep verifying byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

GENESIS = "0" * 64
FIELDS = ("seq", "ts", "kind", "job_id", "path", "sink", "message", "data", "prev", "job_prev")


def canonical(record: dict[str, Any]) -> str:
    """The one serialisation that is hashed (ASCII: lone surrogates in untrusted artifact
    paths stay representable)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=str)


def line_hash(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def make_line(seq: int, ts: float, kind: str, *, prev: str, job_prev: str | None,
              job_id: str | None = None, path: str | None = None, sink: str | None = None,
              message: str = "", data: dict[str, Any] | None = None) -> str:
    record = {"seq": seq,
              "ts": datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds"),
              "kind": kind, "job_id": job_id, "path": path, "sink": sink,
              "message": message or "", "data": data or {}, "prev": prev,
              "job_prev": job_prev}
    return canonical(record)


@dataclass
class Break:
    """The first broken record: where it is and what is wrong with it."""

    position: int          # 1-based row or line number
    seq: int | None        # the record's seq as it claims (None if unreadable)
    reason: str
    where: str = "ledger"

    def __str__(self) -> str:
        name = f"record seq {self.seq}" if self.seq is not None else "a record"
        return f"{self.where}: {name} (line {self.position}): {self.reason}"


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (TypeError, ValueError):
        return None
    if not isinstance(record, dict) or set(record) != set(FIELDS) \
            or not isinstance(record.get("seq"), int):
        return None
    return record


def verify_chain(lines: Iterable[Any], *, link: str = "prev",
                 where: str = "ledger", consecutive: bool = True) -> tuple[Break | None, int]:
    """Check a chain; returns ``(first broken record or None, records checked)``.

    ``lines`` yields ``(line, stored_hash, row_seq)`` tuples or ``AuditRow`` objects (as
    ``ledger.audit_rows()`` does): ``stored_hash`` is the hash the store kept beside the
    line (None for files), ``row_seq`` the seq of the row holding it (None for files).
    ``link`` is ``"prev"`` for the ledger chain or ``"job_prev"`` for a
    per-job export; ``consecutive`` requires seq to grow by exactly one.
    """
    prev_hash, prev_seq, n = GENESIS, None, 0
    for n, item in enumerate(lines, 1):
        line, stored, row_seq = (item if isinstance(item, tuple)
                                 else (item.line, item.hash, item.seq))
        record = _parse(line)
        if record is None:
            return Break(n, row_seq, "not an audit record (unreadable or fields changed)",
                         where), n
        seq = record["seq"]
        if canonical(record) != line:
            return Break(n, seq, "edited (the line is not in canonical form)", where), n
        if row_seq is not None and seq != row_seq:
            return Break(n, row_seq, f"replaced: row {row_seq} holds the record of seq {seq} "
                                     "(records were reordered)", where), n
        if prev_seq is not None and seq <= prev_seq:
            return Break(n, seq, f"out of order: it comes after record seq {prev_seq} "
                                 "(records were reordered)", where), n
        if consecutive and seq != (prev_seq or 0) + 1:
            first = (prev_seq or 0) + 1
            return Break(n, first, "removed" + (f" (and every record up to seq {seq - 1})"
                                                if seq - first > 1 else "")
                         + f": the record before seq {seq} is missing", where), n
        if record[link] != prev_hash:
            if prev_seq is None:
                return Break(n, seq, f"the chain does not start here ({link} is not the "
                                     "genesis hash): earlier records were removed", where), n
            return Break(n - 1, prev_seq, f"edited: its hash no longer matches the {link} "
                                          f"recorded by the next record, seq {seq}"
                         + ("" if consecutive else " (or a record between them was removed)"),
                         where), n
        actual = line_hash(line)
        if stored is not None and stored != actual:
            return Break(n, seq, "edited (its content no longer matches its recorded hash)",
                         where), n
        prev_hash, prev_seq = actual, seq
    return None, n


def verify_export(text: str, ledger_lines: dict[int, str], where: str,
                  ledger_job_seqs: list[int] | None = None,
                  upto: int | None = None) -> tuple[Break | None, int]:
    """Check an exported ``audit.jsonl`` against the ledger, then as a chain of its own.

    In order: every line is a canonical record; seqs increase (else reordered); every
    record equals the ledger's record of the same seq (else edited, or unknown to the
    ledger); every ledger record of the job up to seq ``upto`` (what was exported, as the
    ledger remembers it; default: the file's last record) is in the file (else removed);
    finally the ``job_prev`` links.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    seen: list[int] = []
    for pos, line in enumerate(lines, 1):
        record = _parse(line)
        if record is None or canonical(record) != line:
            return Break(pos, record["seq"] if record else None,
                         "edited (not a canonical audit record)", where), len(lines)
        seq = record["seq"]
        if seen and seq <= seen[-1]:
            return Break(pos, seq, f"out of order: it comes after record seq {seen[-1]} "
                                   "(records were reordered)", where), len(lines)
        if seq not in ledger_lines:
            return Break(pos, seq, "not in the ledger (the ledger lost it, or the record "
                                   "was forged)", where), len(lines)
        if ledger_lines[seq] != line:
            return Break(pos, seq, "edited: it differs from the ledger's record of the same "
                                   "seq", where), len(lines)
        seen.append(seq)
    if ledger_job_seqs is not None:
        last = upto if upto is not None else (seen[-1] if seen else 0)
        for pos, seq in enumerate(s for s in ledger_job_seqs if s <= last):
            if pos >= len(seen) or seen[pos] != seq:
                return Break(pos + 1, seq, "removed: it is in the ledger but missing from "
                                           "the export", where), len(lines)
    return verify_chain(((ln, None, None) for ln in lines), link="job_prev", where=where,
                        consecutive=False)


# What sinks report about retention in ``StoredObject.extra`` (S3 Object Lock, GCS object
# retention and holds; any sink: ``retention`` {mode, retain_until} and ``legal_hold``
# True, e.g. Azure's version-level immutability); recorded as a "retention" audit record.
RETENTION_KEYS = ("object_lock_mode", "object_lock_retain_until", "object_lock_legal_hold",
                  "retention", "legal_hold", "temporary_hold", "event_based_hold",
                  "retention_expiration_time", "read_only")


def retention_facts(extra: dict[str, Any] | None) -> dict[str, Any]:
    return {k: extra[k] for k in RETENTION_KEYS if extra and extra.get(k) not in (None, "")}
