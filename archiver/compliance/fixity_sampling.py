"""Choosing which copies a sampled fixity audit checks.

Sampling (``--sample PERCENT`` or ``--bytes BUDGET``) picks the copies checked least
recently (never-checked first), so repeated sampled runs cover everything in turn, as
restic's ``--read-data-subset`` does; the rotation state is the ``fixity`` table of the
ledger (``CopyRow.checked_at``).
"""

from __future__ import annotations

import math

from ..ledger import CopyRow


def select(rows: list[CopyRow], sample: float | None, budget: int | None) -> list[CopyRow]:
    """The copies to check: all, or the least recently checked PERCENT / BUDGET bytes."""
    if sample is None and budget is None:
        return rows
    rows = sorted(rows, key=lambda r: (r.checked_at is not None, r.checked_at or 0,
                                       r.job_id, r.path, r.sink))
    if sample is not None:
        return rows[:max(1, math.ceil(len(rows) * sample / 100))] if rows else []
    out, total = [], 0
    for row in rows:
        if out and total + row.size > budget:
            break
        out.append(row)
        total += row.size
    return out
