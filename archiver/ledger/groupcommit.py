"""Group commit for the ledger: callers' writes share transactions, each caller waits for
its own commit.

(Moved here from ``archiver/ledger_writer.py``; any backend with one write connection per
process can use it.)

With a lock around one SQLite connection, each worker thread held the lock for a whole
transaction, and every statement in it released and re-took the GIL: the holder kept
waiting for the GIL while up to ``concurrency`` threads waited for the lock (measured:
~2 ms held, ~60 ms waited per stored object with 16 workers). So every write is a unit
of work queued here, and whatever has queued up is committed as one transaction. A call
still returns only once its rows are committed, so what the ledger promises does not
change; it only stops convoying.

Who commits (leader and followers, as LevelDB's write queue): a caller that finds nobody
committing becomes the leader and runs the transaction itself, with every unit queued
behind it (at most ``GROUP_MAX``); callers that arrive meanwhile wait, and the leader
wakes them when their units are committed, then hands the lead to the first unit still
queued. An uncontended write so costs no thread switch at all; a writer thread that
every unit was handed to cost two wake-ups per unit (measured: with 16 threads on two
cores, thread wake-ups were a quarter of the CPU of a run of small artifacts).

If a group's transaction fails, each unit is retried alone, so only the failing one
raises (units are ledger statements only: rolled back and re-run, they write the same).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Iterator

GROUP_MAX = 256  # units per transaction


class _Unit:
    __slots__ = ("error", "lead", "result", "signal", "work")

    def __init__(self, work: Callable[[], Any]):
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None
        self.lead = False  # woken to commit the queue, not because it is done
        # A lock taken now and released once: the cheapest one-shot wake-up (an Event is
        # a Condition, a lock and a list, and its wait takes and drops them again).
        self.signal = threading.Lock()
        self.signal.acquire()


class GroupCommitter:
    """Runs units of work inside ``transaction()``, many per transaction, on the calling
    threads (one at a time)."""

    def __init__(self, transaction: Callable[[], AbstractContextManager[None]], name: str):
        self._transaction = transaction
        self._name = name
        self._queue: collections.deque[_Unit] = collections.deque()
        self._guard = threading.Lock()  # the queue and the lead
        self._leading = False
        self._local = threading.local()  # .inside: this thread runs a group now

    def run(self, work: Callable[[], Any]) -> Any:
        """``work()``'s result once it is committed (its exception if it failed)."""
        if getattr(self._local, "inside", False):
            return work()  # a unit calling the ledger: already inside the transaction
        unit = _Unit(work)
        with self._guard:
            self._queue.append(unit)
            lead = not self._leading
            self._leading = True
        if not lead:
            unit.signal.acquire()  # committed by the leader, or made the leader
            lead = unit.lead
        if lead:
            self._lead()
        if unit.error is not None:
            raise unit.error
        return unit.result

    def close(self) -> None:
        """Return once the work queued so far is committed."""
        while True:
            with self._guard:
                if not self._leading:
                    return
            time.sleep(0.001)

    def _lead(self) -> None:
        """Commit the units at the head of the queue (this thread's own is the first),
        wake their callers, hand the lead on."""
        with self._guard:
            group = [self._queue.popleft() for _ in range(min(GROUP_MAX, len(self._queue)))]
        self._local.inside = True
        try:
            self._commit(group)
        except BaseException as exc:  # noqa: BLE001 - _commit's own failure: every unit's
            for unit in group:
                if unit.error is None:
                    unit.error = exc
        finally:
            self._local.inside = False
            with self._guard:
                successor = self._queue[0] if self._queue else None
                if successor is None:
                    self._leading = False
                else:
                    successor.lead = True
            for unit in group[1:]:
                unit.signal.release()
            if successor is not None:
                successor.signal.release()

    def _commit(self, group: list[_Unit]) -> None:
        """Run the group's units in one transaction and set each unit's result or error
        (subclasses may run transactions differently)."""
        try:
            with self._transaction():
                results = [unit.work() for unit in group]
        except BaseException as exc:  # noqa: BLE001 - handed to the callers
            if len(group) == 1:
                group[0].error = exc
                return
            for unit in group:
                try:
                    with self._transaction():
                        unit.result = unit.work()
                except BaseException as exc:  # noqa: BLE001 - handed to its caller
                    unit.error = exc
        else:
            for unit, result in zip(group, results):
                unit.result = result


class BatchedWrites:
    """``batch()``, ``_write`` and ``_write_now`` of a ledger backend that commits through
    a :class:`GroupCommitter` (``_group()``); ``self._local`` is the backend's
    ``threading.local``. Shared by the SQLite and PostgreSQL ledgers, whose transactions
    differ but whose batches follow the one rule of
    :meth:`archiver.ledger.protocols.RunLedger.batch`."""

    _local: threading.local

    def _group(self) -> GroupCommitter:
        raise NotImplementedError

    @contextmanager
    def batch(self) -> Iterator[None]:
        """See :meth:`archiver.ledger.protocols.RunLedger.batch`."""
        if getattr(self._local, "collected", None) is not None:
            yield  # nested: the outer block commits
            return
        self._local.collected = collected = []
        try:
            yield
        finally:
            self._local.collected = None
        if collected:
            self._group().run(lambda: [work() for work in collected])

    def _write(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` in a committed transaction, or add it to this thread's open
        :meth:`batch` (then None is returned)."""
        collected = getattr(self._local, "collected", None)
        if collected is not None:
            collected.append(work)
            return None
        return self._group().run(work)

    def _write_now(self, work: Callable[[], Any], what: str) -> Any:
        """A write whose result the caller needs: never deferred into a batch."""
        if getattr(self._local, "collected", None) is not None:
            raise RuntimeError(f"{what}() inside batch(): its result is not known until "
                               "the batch commits; call it outside the block")
        return self._group().run(work)
