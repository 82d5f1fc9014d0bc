"""A writer that sends an object in parts on a bounded pool: the machinery cloud sinks share.

:class:`PartedWriter` implements the :class:`archiver.components.Writer` contract for a
store that takes an object either whole (one request) or as numbered parts uploaded
independently and then published with one final request: S3 multipart uploads, Azure
staged blocks, and the like. A sink subclasses it and supplies the requests; the helper
owns everything that is the same for every such store:

* **State.** ``open`` → ``committing`` → ``committed``; a commit that raises leaves
  ``failed``; ``abort``/``discard`` leave ``aborted``/``discarded``. ``write`` and
  ``commit`` refuse any state but ``open`` with ``SinkError("...: cannot write: the
  writer is aborted")``; ``abort`` is idempotent, safe from any thread (a signal
  handler's path) and a no-op after a successful commit.
* **Running digests.** Every byte written updates the running sha256 (and ``size``);
  ``commit`` refuses a ``digests["sha256"]`` that is missing or does not match what was
  written, before anything is published.
* **Parts, bounded memory.** Bytes are buffered up to ``threshold``. An object that ends
  there goes out with one request (:meth:`_put_whole`). On the first byte beyond it the
  helper calls :meth:`_start` once, then cuts ``part_size`` parts and uploads each with
  :meth:`_upload_part` on its own pool of ``max_in_flight`` threads; ``write`` blocks
  while that many parts are in flight. So one writer holds at most ``max(threshold,
  part_size) + max_in_flight × part_size`` bytes (``part_size × (1 + max_in_flight)``
  with the default ``threshold = part_size``), plus the chunk being written, which is
  what the sink declares in ``memory_bound``. Part buffers are reused once uploaded (a
  new one per part measured twice the bound in RSS: the allocator keeps freed blocks).
* **Failures.** The first part that fails is remembered; the next ``write`` or the
  ``commit`` raises it (worded by :meth:`_part_error`), and no later part is sent.
* **Commit** sends the last part, waits for every part in flight (:meth:`_drain`) and
  calls :meth:`_complete` with the parts' results in order.
* **Stops.** The :mod:`archiver.cancel` scope of whoever opened the writer is captured
  in ``__init__`` and re-entered on each pool thread, so a run's stop also cuts the
  parts in flight.

docs/write-a-sink.md walks through a subclass (the Azure sink's).
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, Protocol

from archiver import cancel
from archiver.components import Writer
from archiver.errors import ArchiverError, SinkError
from archiver.model import StoredObject

#: States after which nothing can happen to the writer any more.
FINISHED = ("committed", "aborted", "discarded")
_LIVE = ("open", "committing")  # parts may still be sent


class RunningDigest(Protocol):
    """What :class:`PartedWriter` feeds every byte written: ``update`` and a hashlib
    ``sha256`` (checked at commit). A sink with more running checksums passes one
    object computing them all, so the bytes are read once."""

    sha256: Any

    def update(self, data: bytes | memoryview) -> None: ...


class Running:
    """sha256 of every byte written, plus the hashlib algorithms named (``Running("md5")``
    has ``.sha256`` and ``.md5``)."""

    def __init__(self, *extra: str):
        self.sha256 = hashlib.sha256()
        self._all = [self.sha256]
        for name in extra:
            digest = hashlib.new(name)
            setattr(self, name, digest)
            self._all.append(digest)

    def update(self, data: bytes | memoryview) -> None:
        for digest in self._all:
            digest.update(data)


class PartedWriter(Writer):
    """Writes one object in parts of ``part_size``, at most ``max_in_flight`` at once (the
    protocol: module docstring).

    ``threshold``: the largest object sent whole (default ``part_size``); ``max_parts``:
    the store's limit of parts per object; ``running``: the running digests (default: a
    sha256 only); ``thread_name``: the prefix of the pool's thread names. ``unit`` and
    ``noun`` name a part and the object in messages (``"the blob needs more than 50000
    blocks of ... bytes; raise block_size"``).

    A subclass supplies (each hook's docstring says more): :meth:`_where` (the prefix of
    every message), :meth:`_upload_part` (on a pool thread), :meth:`_put_whole`,
    :meth:`_complete`; optionally :meth:`_start` (create the upload), :meth:`_abort_remote`
    (remove what was sent), :meth:`_part_error` (word a part's failure) and
    :meth:`_closed`. ``pending`` and ``__repr__`` stay the subclass's.

    ``stats`` counts what the memory bound is about: ``in_flight`` parts right now,
    ``max_in_flight`` ever, ``waits`` (times ``write`` blocked for a free slot) and parts
    uploaded, under ``f"{unit}s"`` (``parts``; ``blocks`` for ``unit = "block"``).
    """

    unit = "part"
    noun = "object"

    def __init__(self, *, part_size: int, max_in_flight: int, threshold: int | None = None,
                 max_parts: int = 10_000, running: RunningDigest | None = None,
                 thread_name: str = "archiver-part"):
        if part_size < 1 or max_in_flight < 1:
            raise ValueError("part_size and max_in_flight must be at least 1")
        self._part_size, self._max_in_flight = part_size, max_in_flight
        self._threshold = part_size if threshold is None else threshold
        self._max_parts, self._thread_name = max_parts, thread_name
        self._running = running if running is not None else Running()
        self.size = 0
        self._cond = threading.Condition()
        self._state = "open"  # open | committing | committed | failed | aborted | discarded
        self._buf = bytearray()  # below the threshold: the object so far; then: one part
        self._fill = 0  # bytes of the current part in _buf (once started)
        self._free: list[bytearray] = []  # part buffers uploaded parts gave back
        self._started = False
        self._pool: ThreadPoolExecutor | None = None
        self._results: dict[int, Any] = {}  # part index -> what _upload_part returned
        self._next = 0  # index of the next part
        self._error: BaseException | None = None
        self._counted = f"{self.unit}s"
        self.stats = {"in_flight": 0, "max_in_flight": 0, "waits": 0, self._counted: 0}
        # The stop of whoever opened the writer also cuts the parts it sends on pool
        # threads (archiver.cancel): captured here, re-entered on each part's thread.
        self._canceller = cancel.current()

    # ------------------------------------------------------------------ hooks
    def _where(self) -> str:
        """The prefix of every message: ``"sink 'vault': key 'a/b' (azure://...)"``."""
        return type(self).__name__

    def _start(self) -> None:
        """Once, on the first byte beyond ``threshold``, before any part: create the
        upload (S3's CreateMultipartUpload); raise ``SinkError`` to fail the writer.
        Default: the store needs none (Azure's blocks live under the blob's name)."""

    def _upload_part(self, index: int, data: bytearray) -> Any:
        """On a pool thread, in the opener's cancel scope: send part ``index`` (0-based,
        in byte order) and return what :meth:`_complete` needs of it (an ETag, a
        checksum). ``data`` is reused once this returns: send it, do not keep it."""
        raise NotImplementedError

    def _put_whole(self, data: bytearray, sha256: str, digests: dict[str, str]) -> StoredObject:
        """The whole object (at most ``threshold`` bytes, now the subclass's) in one
        request; ``sha256`` is checked already (lower case)."""
        raise NotImplementedError

    def _complete(self, parts: list[Any], sha256: str,
                  digests: dict[str, str]) -> StoredObject:
        """Publish the uploaded parts; ``parts`` holds what each :meth:`_upload_part`
        returned, in order. Every part has been sent; none is in flight."""
        raise NotImplementedError

    def _abort_remote(self) -> None:
        """On ``abort``/``discard`` (any thread), after the state change (no new part
        starts): remove what was sent. Call :meth:`_wait_idle` to wait for the parts in
        flight first, or remove, wait and remove again, as the store requires;
        :attr:`started` says whether :meth:`_start` succeeded. Also called when an abort
        raced :meth:`_start`, to undo what it created. Default: nothing to remove."""

    def _part_error(self, exc: BaseException) -> SinkError:
        """The ``SinkError`` raised for the first part failure ``exc``."""
        if isinstance(exc, SinkError):
            return exc
        if isinstance(exc, ArchiverError):
            return SinkError(f"{self._where()}: {exc}")
        return SinkError(f"{self._where()}: uploading a {self.unit} failed: {exc!r}")

    def _closed(self) -> None:
        """Once the writer is finished (committed, aborted or discarded): e.g. drop it
        from the sink's table of live writers."""

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> str:
        return self._state

    @property
    def started(self) -> bool:
        """True once :meth:`_start` succeeded: parts may exist at the store."""
        return self._started

    def _refused(self, action: str) -> SinkError:
        return SinkError(f"{self._where()}: cannot {action}: the writer is {self._state}")

    def _check_open(self, action: str) -> None:
        if self._state != "open":
            raise self._refused(action)
        if self._error is not None:
            raise self._part_error(self._error)

    # ------------------------------------------------------------------ writing
    def write(self, chunk: bytes) -> None:
        with self._cond:
            self._check_open("write")
        if not chunk:
            return
        self._running.update(chunk)
        self.size += len(chunk)
        if not self._started:
            self._buf += chunk
            if len(self._buf) > self._threshold:
                self._begin()
                self._cut_buffered_parts()
            return
        view = memoryview(chunk).cast("B")
        while view:
            n = min(self._part_size - self._fill, len(view))
            self._buf[self._fill:self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == self._part_size:
                part, self._buf, self._fill = self._buf, self._spare(), 0
                self._submit(part)

    def _begin(self) -> None:
        try:
            self._start()
        except BaseException:
            with self._cond:
                if self._state == "open":
                    self._state = "failed"
            raise
        with self._cond:
            lost = self._state != "open"
            if not lost:
                self._started = True
                self._pool = ThreadPoolExecutor(self._max_in_flight,
                                                thread_name_prefix=self._thread_name)
        if lost:  # abort() ran on another thread while _start ran: undo what it made
            self._abort_remote()
            raise self._refused("write")

    def _spare(self) -> bytearray:
        """A part-sized buffer: one an uploaded part gave back, else a new one."""
        with self._cond:
            if self._free:
                return self._free.pop()
        return bytearray(self._part_size)

    def _cut_buffered_parts(self) -> None:
        """After the threshold overflowed: send every whole part the buffer holds. The
        buffer itself becomes the first part (cut in place, not copied); the others are
        copied into part buffers, and so is what remains."""
        data = self._buf
        full = len(data) // self._part_size * self._part_size
        with memoryview(data) as view:
            rest = []
            for start in range(self._part_size, full, self._part_size):
                part = self._spare()
                part[:] = view[start:start + self._part_size]
                rest.append(part)
            self._buf, self._fill = self._spare(), len(data) - full
            self._buf[:self._fill] = view[full:]
        if full:
            del data[self._part_size:]
            self._submit(data)
        for part in rest:
            self._submit(part)

    def _submit(self, part: bytearray) -> None:
        with self._cond:
            if self.stats["in_flight"] >= self._max_in_flight:
                self.stats["waits"] += 1
            while (self.stats["in_flight"] >= self._max_in_flight and self._state in _LIVE
                   and self._error is None):
                self._cond.wait()
            pool = self._pool
            if self._state not in _LIVE or pool is None:
                raise self._refused("write")
            if self._error is not None:
                raise self._part_error(self._error)
            index = self._next
            if index >= self._max_parts:
                raise SinkError(f"{self._where()}: the {self.noun} needs more than "
                                f"{self._max_parts} {self.unit}s of {self._part_size} "
                                f"bytes; raise {self.unit}_size")
            self._next += 1
            self.stats["in_flight"] += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"],
                                              self.stats["in_flight"])
        try:
            future = pool.submit(self._send, index, part)
        except RuntimeError as exc:  # the pool was shut down by a concurrent abort
            with self._cond:
                self.stats["in_flight"] -= 1
                self._cond.notify_all()
            raise self._refused("write") from exc
        future.add_done_callback(self._part_done)  # also runs for cancelled parts

    def _send(self, index: int, data: bytearray) -> None:
        """One part, on a pool thread, in the opener's cancel scope."""
        if self._state not in _LIVE or self._error is not None:
            return  # stopped or failed meanwhile: sending it would only leave more behind
        scope = self._canceller.scope() if self._canceller is not None else nullcontext()
        with scope:
            result = self._upload_part(index, data)
        with self._cond:
            self._results[index] = result
            self.stats[self._counted] += 1
            if (len(data) == self._part_size and len(self._free) < self._max_in_flight
                    and self._state in _LIVE):
                self._free.append(data)  # the request is done with it: write() may refill it

    def _part_done(self, future: Future) -> None:
        with self._cond:
            self.stats["in_flight"] -= 1
            if not future.cancelled() and future.exception() is not None \
                    and self._error is None:
                self._error = future.exception()
            self._cond.notify_all()

    def _drain(self) -> None:
        """Wait until no part is in flight; raise the first part failure."""
        with self._cond:
            while self.stats["in_flight"] and self._state == "committing" \
                    and self._error is None:
                self._cond.wait()
            if self._state != "committing":
                raise self._refused("commit")
            if self._error is not None:
                raise self._part_error(self._error)

    def _wait_idle(self) -> None:
        """For :meth:`_abort_remote`: drop queued parts, wait for those being sent."""
        pool = self._pool
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        with self._cond:
            while self.stats["in_flight"]:
                self._cond.wait()

    # ------------------------------------------------------------------ commit
    def commit(self, digests: dict[str, str]) -> StoredObject:
        with self._cond:
            self._check_open("commit")
            self._state = "committing"
        try:
            stored = self._commit(digests or {})
        except BaseException:
            with self._cond:
                if self._state == "committing":
                    self._state = "failed"
                self._cond.notify_all()
            raise
        with self._cond:
            if self._state == "committing":
                self._state = "committed"
        self._finish()
        return stored

    def _commit(self, digests: dict[str, str]) -> StoredObject:
        sha256 = str(digests.get("sha256", "")).lower()
        if not sha256:
            raise SinkError(f"{self._where()}: cannot commit without a sha256 digest")
        ours = self._running.sha256.hexdigest()
        if ours != sha256:
            raise SinkError(f"{self._where()}: the bytes written have sha256 {ours}, not the "
                            f"{sha256} given to commit; nothing was stored")
        if not self._started:
            body, self._buf = self._buf, bytearray()  # handed over whole: no copy
            return self._put_whole(body, sha256, digests)
        if self._fill or self._next == 0:
            part, self._buf = self._buf, bytearray()
            del part[self._fill:]  # the last part: shrunk in place, not copied
            self._fill = 0
            self._submit(part)
        self._drain()
        return self._complete([self._results[i] for i in range(self._next)], sha256, digests)

    # ------------------------------------------------------------------ abort
    def abort(self) -> None:
        """Drop everything this writer sent; safe from any thread, idempotent, and a
        no-op after a successful commit. Raises what :meth:`_abort_remote` raises (the
        core then keeps the pending token for ``Sink.discard``)."""
        self._stop("aborted")

    def discard(self) -> None:
        """As :meth:`abort`, for ``Sink.discard``: a later ``commit`` fails."""
        self._stop("discarded")

    def _stop(self, state: str) -> None:
        with self._cond:
            if self._state in FINISHED:
                return
            self._state = state
            self._cond.notify_all()  # wakes a write() waiting for a part slot
            self._free.clear()
        self._buf, self._fill = bytearray(), 0
        try:
            self._abort_remote()
        finally:
            self._finish()

    def _finish(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self._closed()
