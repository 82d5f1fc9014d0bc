"""archiver.parts.PartedWriter's own logic, on an in-memory store.

The S3 and Azure plugin suites prove the real subclasses against servers; this tests
what the helper promises every subclass: the bytes reach the store in order, at most
``max_in_flight`` parts at once with reused buffers, the first part failure surfaces,
commit checks the sha256, abort is idempotent and wakes a blocked write, and the
opener's cancel scope reaches the pool threads.
"""

from __future__ import annotations

import hashlib
import threading

import pytest

from archiver import cancel
from archiver.errors import SinkError
from archiver.model import StoredObject
from archiver.parts import PartedWriter, Running


def data_of(n: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


def digests(data: bytes) -> dict[str, str]:
    return {"sha256": hashlib.sha256(data).hexdigest()}


class MemoryWriter(PartedWriter):
    """Parts land in ``self.parts``; ``gate`` (an Event) holds every upload until set."""

    def __init__(self, part_size=4, max_in_flight=2, threshold=None, fail_at=None,
                 gate=None, start_error=None, **kw):
        super().__init__(part_size=part_size, max_in_flight=max_in_flight,
                         threshold=threshold, thread_name="test-part", **kw)
        self.parts: dict[int, bytes] = {}
        self.buffers: list[bytearray] = []  # every buffer seen (kept alive: ids stay unique)
        self.calls: list[str] = []
        self.scopes: list[object] = []
        self.fail_at, self.gate, self.start_error = fail_at, gate, start_error
        self.entered = threading.Semaphore(0)

    def _where(self) -> str:
        return "sink 'mem': key 'k'"

    def _start(self) -> None:
        self.calls.append("start")
        if self.start_error is not None:
            raise self.start_error

    def _upload_part(self, index: int, data: bytearray):
        self.entered.release()
        self.scopes.append(cancel.current())
        if self.gate is not None:
            self.gate.wait(30)
        if index == self.fail_at:
            raise OSError(f"part {index} lost")
        if not any(b is data for b in self.buffers):
            self.buffers.append(data)
        self.parts[index] = bytes(data)  # copied: the helper reuses the buffer
        return f"etag-{index}"

    def _put_whole(self, data, sha256, digests):
        self.calls.append("put")
        self.whole = bytes(data)
        return StoredObject(sink="mem", key="k", size=len(data), digests=dict(digests))

    def _complete(self, parts, sha256, digests):
        self.calls.append("complete")
        self.completed = parts
        return StoredObject(sink="mem", key="k", size=self.size, digests=dict(digests))

    def _abort_remote(self) -> None:
        self.calls.append("abort_remote")
        if self.started:
            self._wait_idle()

    def _closed(self) -> None:
        self.calls.append("closed")

    def stored(self) -> bytes:
        return b"".join(self.parts[i] for i in sorted(self.parts))


def write_chunks(writer, data: bytes, chunk: int) -> None:
    for i in range(0, len(data), chunk):
        writer.write(data[i:i + chunk])


def wait_until(predicate, what: str) -> None:
    tick = threading.Event()
    for _ in range(3000):
        if predicate():
            return
        tick.wait(0.01)
    raise AssertionError(f"never happened: {what}")


# ---------------------------------------------------------------------- the bytes
@pytest.mark.parametrize("size", [0, 1, 4])
def test_an_object_up_to_the_threshold_goes_out_whole(size):
    writer = MemoryWriter(part_size=4)
    data = data_of(size)
    writer.write(data)
    writer.write(b"")
    stored = writer.commit(digests(data))
    assert writer.calls == ["put", "closed"] and writer.whole == data
    assert stored.size == size and writer.size == size
    assert writer.state == "committed" and not writer.started
    assert writer.stats["parts"] == 0


@pytest.mark.parametrize("chunk", [1, 3, 4, 7, 1000])
@pytest.mark.parametrize("threshold,size", [(t, s) for t in (None, 3, 4, 10)
                                            for s in (5, 8, 23, 40) if s > (t or 4)])
def test_parts_arrive_in_order_whatever_the_chunks(threshold, chunk, size):
    writer = MemoryWriter(part_size=4, max_in_flight=2, threshold=threshold)
    data = data_of(size)
    write_chunks(writer, data, chunk)
    writer.commit(digests(data))
    assert writer.calls == ["start", "complete", "closed"]
    assert writer.stored() == data
    n = -(-size // 4)
    assert sorted(writer.parts) == list(range(n))  # no empty trailing part
    assert all(len(writer.parts[i]) == 4 for i in range(n - 1))
    assert writer.completed == [f"etag-{i}" for i in range(n)]
    assert writer.stats["parts"] == n and writer.size == size


def test_part_buffers_are_reused_within_the_bound():
    writer = MemoryWriter(part_size=64, max_in_flight=2)
    data = data_of(64 * 50 + 5)
    write_chunks(writer, data, 10)
    writer.commit(digests(data))
    assert writer.stored() == data
    # in flight + the one being filled (+ the threshold buffer, cut in place): not 51
    assert len(writer.buffers) <= 2 + 2


def test_running_digests_see_every_byte():
    running = Running("md5")
    writer = MemoryWriter(part_size=4, running=running)
    data = data_of(30)
    write_chunks(writer, data, 7)
    writer.commit(digests(data))
    assert running.md5.hexdigest() == hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------------- the bound
def test_write_blocks_at_max_in_flight_and_resumes():
    gate = threading.Event()
    writer = MemoryWriter(part_size=4, max_in_flight=2, gate=gate)
    data = data_of(4 * 10)
    done = {}

    def produce():
        try:
            write_chunks(writer, data, 4)
            done["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - reported below
            done["error"] = exc

    thread = threading.Thread(target=produce)
    thread.start()
    wait_until(lambda: writer.stats["waits"], "write blocked")
    assert thread.is_alive() and not done, "write() did not block at the bound"
    assert writer.stats["in_flight"] == 2
    gate.set()
    thread.join(30)
    assert done == {"ok": True}
    writer.commit(digests(data))
    assert writer.stored() == data
    assert writer.stats["max_in_flight"] == 2 and writer.stats["parts"] == 10


def test_unit_names_the_count_and_max_parts_is_enforced():
    class Blocks(MemoryWriter):
        unit, noun = "block", "blob"

    writer = Blocks(part_size=4, max_parts=3)
    assert "blocks" in writer.stats and "parts" not in writer.stats
    with pytest.raises(SinkError, match=r"the blob needs more than 3 blocks of 4 bytes; "
                                        r"raise block_size"):
        writer.write(data_of(17))
    writer.abort()


# ---------------------------------------------------------------------- failures
def test_the_first_part_failure_surfaces_and_nothing_is_published():
    writer = MemoryWriter(part_size=4, max_in_flight=1, fail_at=1)
    with pytest.raises(SinkError) as exc:
        for i in range(20):  # a later write or the commit sees the failure
            writer.write(data_of(4))
        writer.commit(digests(data_of(80)))
    assert str(exc.value).startswith("sink 'mem': key 'k': uploading a part failed")
    assert "part 1 lost" in str(exc.value)
    assert "complete" not in writer.calls and 1 not in writer.parts
    assert max(writer.parts) <= 2  # parts after the failure are not sent (one raced it)
    writer.abort()
    assert writer.calls[-2:] == ["abort_remote", "closed"]


def test_a_failure_at_commit_leaves_the_writer_failed_and_abortable():
    writer = MemoryWriter(part_size=4, fail_at=2)
    data = data_of(10)
    writer.write(data)
    with pytest.raises(SinkError, match="part 2 lost"):
        writer.commit(digests(data))
    assert writer.state == "failed"
    with pytest.raises(SinkError, match="cannot write: the writer is failed"):
        writer.write(b"x")
    writer.abort()
    assert writer.state == "aborted"


@pytest.mark.parametrize("size", [3, 30])
def test_commit_checks_the_sha256(size):
    writer = MemoryWriter(part_size=4)
    data = data_of(size)
    writer.write(data)
    with pytest.raises(SinkError, match="cannot commit without a sha256 digest"):
        writer.commit({})
    assert writer.state == "failed"

    writer = MemoryWriter(part_size=4)
    writer.write(data)
    other = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(SinkError) as exc:
        writer.commit({"sha256": other.upper()})
    ours = hashlib.sha256(data).hexdigest()
    assert str(exc.value) == (f"sink 'mem': key 'k': the bytes written have sha256 {ours}, "
                              f"not the {other} given to commit; nothing was stored")
    assert "put" not in writer.calls and "complete" not in writer.calls
    writer.abort()


def test_a_failing_start_fails_the_writer():
    writer = MemoryWriter(part_size=4, start_error=SinkError("sink 'mem': no upload"))
    with pytest.raises(SinkError, match="no upload"):
        writer.write(data_of(5))
    assert writer.state == "failed" and not writer.started and writer.parts == {}
    writer.abort()
    assert writer.calls == ["start", "abort_remote", "closed"]


def test_an_abort_during_start_undoes_it():
    class Racing(MemoryWriter):
        def _start(self):
            super()._start()
            threading.Thread(target=self.abort).start()  # a signal handler, meanwhile
            wait_until(lambda: "closed" in self.calls, "abort done")

    writer = Racing(part_size=4)
    with pytest.raises(SinkError, match="cannot write: the writer is aborted"):
        writer.write(data_of(5))
    assert writer.calls.count("abort_remote") == 2  # the abort's, and the one undoing _start
    assert writer.parts == {}


# ---------------------------------------------------------------------- abort
def test_abort_is_idempotent_and_refuses_later_use():
    writer = MemoryWriter(part_size=4)
    writer.write(data_of(10))
    writer.abort()
    writer.abort()
    assert writer.calls.count("abort_remote") == 1 and writer.calls.count("closed") == 1
    with pytest.raises(SinkError, match="cannot write: the writer is aborted"):
        writer.write(b"x")
    with pytest.raises(SinkError, match="cannot commit: the writer is aborted"):
        writer.commit(digests(b""))


def test_abort_after_commit_is_a_no_op_and_discard_blocks_commit():
    writer = MemoryWriter(part_size=4)
    writer.write(data_of(10))
    writer.commit(digests(data_of(10)))
    writer.abort()
    assert "abort_remote" not in writer.calls and writer.state == "committed"

    writer = MemoryWriter(part_size=4)
    writer.write(data_of(10))
    writer.discard()
    with pytest.raises(SinkError, match="cannot commit: the writer is discarded"):
        writer.commit(digests(data_of(10)))


def test_abort_from_another_thread_wakes_a_blocked_write():
    gate = threading.Event()
    writer = MemoryWriter(part_size=4, max_in_flight=1, gate=gate)
    result = {}

    def produce():
        try:
            write_chunks(writer, data_of(40), 4)
        except BaseException as exc:  # noqa: BLE001 - checked below
            result["error"] = exc

    thread = threading.Thread(target=produce)
    thread.start()
    wait_until(lambda: writer.stats["waits"], "write blocked")
    aborter = threading.Thread(target=writer.abort)
    aborter.start()
    thread.join(30)
    assert isinstance(result.get("error"), SinkError) and "aborted" in str(result["error"])
    assert aborter.is_alive(), "abort must wait for the part still being sent"
    gate.set()
    aborter.join(30)
    assert not aborter.is_alive() and writer.stats["in_flight"] == 0
    assert writer.calls[-2:] == ["abort_remote", "closed"]


# ---------------------------------------------------------------------- stops
def test_parts_run_in_the_openers_cancel_scope():
    canceller = cancel.Canceller()
    with canceller.scope():
        writer = MemoryWriter(part_size=4)
    writer.write(data_of(20))
    writer.commit(digests(data_of(20)))
    assert writer.scopes and all(s is canceller for s in writer.scopes)

    outside = MemoryWriter(part_size=4)
    outside.write(data_of(20))
    outside.commit(digests(data_of(20)))
    assert outside.scopes and all(s is None for s in outside.scopes)
