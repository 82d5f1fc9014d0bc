"""Appending to the audit chain, for any backend.

The rules of a record (its line, hash, ``prev`` and ``job_prev`` links) are in
:mod:`archiver.ledger.chainrules`; this module decides *which* heads a new record links
to, without knowing the store. A backend provides three callables, each run inside its
write transaction, after it has taken the lock that serialises appends (SQLite: ``BEGIN
IMMEDIATE``; PostgreSQL: an advisory transaction lock):

* ``read_head() -> (seq, hash) | None``: the chain's last record;
* ``read_job_head(job_id) -> hash | None``: the job's last record;
* ``insert(seq, job_id, line, hash)``: store one record.

Reading the job's head for every record would cost a query per record, so each handle
remembers the heads it wrote last (:data:`JOB_HEADS` jobs). That memory is valid only if
nobody else appended since: the global head is read once per transaction, and when it is
not the one this handle wrote last, the remembered job heads are dropped. A rolled-back
transaction forgets everything it appended (:meth:`AuditChain.rollback`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .chainrules import GENESIS, line_hash, make_line

JOB_HEADS = 10_000  # jobs whose last audit record is remembered


class AuditChain:
    """The append side of one ledger handle; use it only inside write transactions."""

    def __init__(self, read_head: Callable[[], tuple[int, str] | None],
                 read_job_head: Callable[[str], str | None],
                 insert: Callable[[int, str | None, str, str], None], *,
                 clock: Callable[[], float] = time.time, job_heads: int = JOB_HEADS):
        self._read_head, self._read_job_head, self._insert = read_head, read_job_head, insert
        self._clock, self._max_job_heads = clock, job_heads
        # The chain's head and each job's last record, as this handle last saw and wrote
        # them; the global head is checked against the store once per transaction.
        self._head: tuple[int, str] | None = None
        self._head_checked = False
        self._job_heads: dict[str, str] = {}

    def begin(self) -> None:
        """A new transaction starts: the head must be read again before the next append."""
        self._head_checked = False

    def rollback(self) -> None:
        """The transaction was rolled back: forget what it appended."""
        self._head, self._job_heads, self._head_checked = None, {}, False

    def append(self, kind: str, *, job_id: str | None = None, path: str | None = None,
               sink: str | None = None, message: str = "",
               data: dict[str, Any] | None = None) -> tuple[int, str]:
        """Append one record; returns its ``(seq, hash)``."""
        seq, prev = self._chain_head()
        job_prev = None
        if job_id is not None:
            job_prev = self._job_heads.get(job_id)
            if job_prev is None:
                job_prev = self._read_job_head(job_id) or GENESIS
        line = make_line(seq + 1, self._clock(), kind, prev=prev, job_prev=job_prev,
                         job_id=job_id, path=path, sink=sink, message=message, data=data)
        digest = line_hash(line)
        self._insert(seq + 1, job_id, line, digest)
        self._head = (seq + 1, digest)
        if job_id is not None:
            if len(self._job_heads) >= self._max_job_heads:
                self._job_heads.clear()
            self._job_heads[job_id] = digest
        return seq + 1, digest

    def _chain_head(self) -> tuple[int, str]:
        """(seq, hash) of the chain's last record, read once per transaction."""
        if self._head_checked:
            return self._head or (0, GENESIS)
        head = self._read_head()
        head = (head[0], head[1]) if head else None
        if head != self._head:
            self._job_heads.clear()
        self._head, self._head_checked = head, True
        return head or (0, GENESIS)
