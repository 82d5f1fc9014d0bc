"""Group commit for the ledger: one thread writes, callers wait for their own commit.

(Moved here from ``archiver/ledger_writer.py``, unchanged in behaviour; any backend with
one write connection per process can use it.)

With a lock around one SQLite connection, each worker thread held the lock for a whole
transaction, and every statement in it released and re-took the GIL: the holder kept
waiting for the GIL while up to ``concurrency`` threads waited for the lock (measured:
~2 ms held, ~60 ms waited per stored object with 16 workers). Here every write is a unit
of work handed to a single writer thread, which commits whatever has queued up as one
transaction and then wakes the callers. A call still returns only once its rows are
committed, so what the ledger promises does not change; it only stops convoying.

If a group's transaction fails, each unit is retried alone, so only the failing one
raises (units are ledger statements only: rolled back and re-run, they write the same).
The thread starts on demand and ends after a second without work.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

GROUP_MAX = 256  # units per transaction
IDLE_EXIT = 1.0  # seconds without work before the thread ends


class _Unit:
    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[], Any]):
        self.work = work
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommitter:
    """Runs units of work inside ``transaction()`` on one thread, many per transaction."""

    def __init__(self, transaction: Callable[[], AbstractContextManager[None]], name: str):
        self._transaction = transaction
        self._name = name
        self._queue: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()  # None: close()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, work: Callable[[], Any]) -> Any:
        """``work()``'s result once it is committed (its exception if it failed)."""
        if threading.current_thread() is self._thread:
            return work()  # a unit calling the ledger: already inside the transaction
        unit = _Unit(work)
        self._queue.put(unit)
        with self._guard:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name,
                                                daemon=True)
                self._thread.start()
        unit.done.wait()
        if unit.error is not None:
            raise unit.error
        return unit.result

    def close(self) -> None:
        """End the thread once the work queued so far is committed."""
        with self._guard:
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_EXIT)
            except queue.Empty:
                first = None
            if first is None:
                with self._guard:  # run() enqueues before it looks at the thread
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            group = [first]
            stop = False
            while len(group) < GROUP_MAX:
                try:
                    unit = self._queue.get_nowait()
                except queue.Empty:
                    break
                if unit is None:
                    stop = True  # close(): commit what came before, then look again
                    break
                group.append(unit)
            self._commit(group)
            if stop:
                self._queue.put(None)

    def _commit(self, group: list[_Unit]) -> None:
        try:
            with self._transaction():
                results = [unit.work() for unit in group]
        except BaseException as exc:  # noqa: BLE001 - handed to the callers
            if len(group) == 1:
                group[0].error = exc
                group[0].done.set()
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
        for unit in group:
            unit.done.set()
