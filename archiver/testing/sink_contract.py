"""The contract every sink (local, S3, GCS, third-party) must pass.

Subclass :class:`SinkContract` in a test module and provide a ``sink`` fixture returning
a fresh, empty sink; every test below then runs against it::

    import pytest
    from archiver.testing.sink_contract import SinkContract

    class TestMySink(SinkContract):
        @pytest.fixture
        def sink(self, tmp_path):
            return MySink(MySink.Config(root=tmp_path), label="t")

The suite uses only the :class:`archiver.components.Sink` / ``Writer`` API. What it
requires beyond the docstrings there:

* failures are :class:`archiver.errors.SinkError` (or a subclass): ``open_read`` of a
  missing key, ``write``/``commit`` after ``commit`` or ``abort``, ``commit`` after the
  writer's ``pending`` token was discarded;
* a :class:`~archiver.errors.ConflictError` message names the sink label and the key;
* ``abort`` after a successful ``commit`` is a no-op (the object stays);
* keys are opaque: ``%25`` and ``%`` are different characters, never URL-decoded.

Optional capabilities are class attributes of the test class (override to opt out).
The asserts carry their own messages, so the suite reads well even where pytest does not
rewrite asserts in installed modules.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from ..components import Sink
from ..errors import ConflictError, SinkError

MiB = 1 << 20


def sha256_digests(data: bytes) -> dict[str, str]:
    """The ``digests`` argument of ``Writer.commit`` for ``data``."""
    return {"sha256": hashlib.sha256(data).hexdigest()}


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible test bytes."""
    return random.Random(seed).randbytes(size)


def chunked(data: bytes, seed: int = 0, max_chunk: int = MiB + 1) -> list[bytes]:
    """``data`` cut into irregular chunks, with empty chunks at the start, middle and end."""
    rng, out, pos = random.Random(seed), [b""], 0
    while pos < len(data):
        n = rng.choice((0, 1, 7, 4096, 65537, rng.randrange(1, max_chunk + 1)))
        out.append(data[pos:pos + n])
        pos += n
    return out + [b""]


def store(sink: Sink, key: str, data: bytes, chunks: list[bytes] | None = None,
          metadata: dict[str, str] | None = None):
    """Write ``data`` (as ``chunks`` if given) at ``key`` and commit; return the StoredObject."""
    writer = sink.open_writer(key, metadata)
    try:
        for chunk in chunks if chunks is not None else [data]:
            writer.write(chunk)
        return writer.commit(sha256_digests(data))
    except BaseException:
        writer.abort()
        raise


def read_back(sink: Sink, key: str) -> bytes:
    """The stored bytes of ``key`` through ``open_read`` (checks every chunk is bytes)."""
    parts = []
    with sink.open_read(key) as chunks:
        for chunk in chunks:
            assert isinstance(chunk, (bytes, bytearray, memoryview)), \
                f"open_read yielded {type(chunk).__name__}, not bytes"
            parts.append(bytes(chunk))
    return b"".join(parts)


def assert_absent(sink: Sink, key: str, when: str) -> None:
    found = sink.stat(key)
    assert found is None, f"{when}: stat({key!r}) should be None, got {found!r}"
    with pytest.raises(SinkError):
        read_back(sink, key)


def assert_holds(sink: Sink, key: str, data: bytes, when: str) -> None:
    found = sink.stat(key)
    assert found is not None, f"{when}: stat({key!r}) is None"
    assert found.size == len(data), f"{when}: stat size {found.size} != {len(data)}"
    want = hashlib.sha256(data).hexdigest()
    assert found.digests.get("sha256") == want, \
        f"{when}: stat sha256 {found.digests.get('sha256')} != {want}"
    got = read_back(sink, key)
    assert got == data, f"{when}: open_read returned {len(got)} bytes, not the stored {len(data)}"


class SinkContract:
    """Base class of a sink's contract tests; subclasses provide the ``sink`` fixture."""

    #: writers expose a ``pending`` token and ``Sink.discard(pending)`` removes what an
    #: abandoned writer left behind, so that writer can no longer commit.
    supports_discard = True
    #: total size of the large streaming test (above S3's 5 MiB minimum part size).
    large_object_size = 5 * MiB + 12345

    @pytest.fixture
    def sink(self) -> Sink:
        raise NotImplementedError("subclasses of SinkContract provide a 'sink' fixture "
                                  "returning a fresh, empty sink")

    # ------------------------------------------------------------------ streaming
    def test_many_chunks_then_commit(self, sink):
        data = payload(self.large_object_size, seed=1)
        chunks = chunked(data, seed=1)
        assert sum(1 for c in chunks if not c) >= 2 and len(chunks) > 5
        key = "contract/stream/large.bin"
        stored = store(sink, key, data, chunks, metadata={"archiver-job": "job-1"})
        assert stored.sink == sink.label, f"StoredObject.sink {stored.sink!r} != {sink.label!r}"
        assert stored.key == key, f"StoredObject.key {stored.key!r} != {key!r}"
        assert stored.size == len(data), f"StoredObject.size {stored.size} != {len(data)}"
        assert stored.digests.get("sha256") == sha256_digests(data)["sha256"]
        assert stored.existed is False, "a new object must report existed=False"
        assert_holds(sink, key, data, "after commit")

    def test_zero_byte_object(self, sink):
        key = "contract/empty/zero.bin"
        stored = store(sink, key, b"", [b"", b""])
        assert stored.size == 0 and stored.existed is False, f"unexpected {stored!r}"
        assert_holds(sink, key, b"", "zero-byte object")

    def test_missing_key(self, sink):
        assert_absent(sink, "contract/never/written.bin", "never written")

    def test_keys_are_opaque(self, sink):
        # Non-ASCII and percent signs; "%25" must not be decoded to "%" (or the reverse).
        keys = ["contract/ünïcödé/日本語 ✓ naïve.txt", "contract/pct/100%25 done.bin",
                "contract/pct/100%2525 done.bin", "contract/pct/100% done.bin",
                "contract/pct/a+b%20c.bin", "contract/dots/...x..y.tar.gz"]
        for i, key in enumerate(keys):
            store(sink, key, payload(100 + i, seed=i))
        for i, key in enumerate(keys):
            assert_holds(sink, key, payload(100 + i, seed=i), f"key {key!r}")

    def test_describe_names_the_key(self, sink):
        key = "contract/describe/obj.bin"
        where = sink.describe(key)
        assert isinstance(where, str) and "obj.bin" in where, \
            f"describe({key!r}) = {where!r} does not name the key"

    # ------------------------------------------------------------------ visibility
    def test_nothing_visible_before_commit(self, sink):
        key = "contract/visibility/obj.bin"
        data = payload(3 * MiB, seed=2)
        writer = sink.open_writer(key)
        try:
            for chunk in chunked(data, seed=2):
                writer.write(chunk)
                assert sink.stat(key) is None, "the key became visible before commit"
            assert_absent(sink, key, "written, not committed")
            writer.commit(sha256_digests(data))
        finally:
            writer.abort()
        assert_holds(sink, key, data, "after commit")

    def test_abort_leaves_nothing(self, sink):
        key = "contract/abort/obj.bin"
        writer = sink.open_writer(key)
        writer.write(payload(MiB + 3, seed=3))
        writer.abort()
        writer.abort()  # idempotent
        assert_absent(sink, key, "after abort")
        with pytest.raises(SinkError):
            writer.write(b"more")
        with pytest.raises(SinkError):
            writer.commit(sha256_digests(b""))
        assert_absent(sink, key, "commit after abort")

    def test_writer_after_commit(self, sink):
        key = "contract/after-commit/obj.bin"
        data = payload(1000, seed=4)
        writer = sink.open_writer(key)
        writer.write(data)
        writer.commit(sha256_digests(data))
        with pytest.raises(SinkError):
            writer.write(b"more")
        with pytest.raises(SinkError):
            writer.commit(sha256_digests(data))
        writer.abort()  # a no-op after commit: the object stays
        assert_holds(sink, key, data, "abort after commit")

    # ------------------------------------------------------------------ existing keys
    def test_same_bytes_at_existing_key(self, sink):
        key = "contract/existing/same.bin"
        data = payload(2 * MiB + 1, seed=5)
        store(sink, key, data)
        again = store(sink, key, data, chunked(data, seed=6))
        assert again.existed is True, "identical bytes at an existing key: existed=True"
        assert again.size == len(data), f"StoredObject.size {again.size} != {len(data)}"
        assert_holds(sink, key, data, "after storing the same bytes again")

    def test_different_bytes_conflict(self, sink):
        key = "contract/existing/conflict.bin"
        old, new = payload(4096, seed=7), payload(4096, seed=8)
        store(sink, key, old)
        writer = sink.open_writer(key)
        writer.write(new)
        with pytest.raises(ConflictError) as exc:
            writer.commit(sha256_digests(new))
        writer.abort()  # allowed after a failed commit
        message = str(exc.value)
        assert key in message, f"ConflictError does not name the key: {message}"
        assert sink.label in message, f"ConflictError does not name the sink: {message}"
        assert_holds(sink, key, old, "after a conflicting commit")

    def test_racing_writers_never_overwrite(self, sink):
        # Both writers open before either commits: the second must still notice.
        same, other = "contract/race/same.bin", "contract/race/other.bin"
        a, b = payload(5000, seed=9), payload(5000, seed=10)
        w1, w2 = sink.open_writer(same), sink.open_writer(same)
        w3, w4 = sink.open_writer(other), sink.open_writer(other)
        for writer, data in ((w1, a), (w2, a), (w3, a), (w4, b)):
            writer.write(data)
        assert w1.commit(sha256_digests(a)).existed is False
        assert w2.commit(sha256_digests(a)).existed is True, "second identical commit: existed"
        assert w3.commit(sha256_digests(a)).existed is False
        with pytest.raises(ConflictError):
            w4.commit(sha256_digests(b))
        w4.abort()
        assert_holds(sink, same, a, "racing identical writers")
        assert_holds(sink, other, a, "racing different writers")

    # ------------------------------------------------------------------ crash cleanup
    def _pending(self, writer) -> str:
        if not self.supports_discard:
            pytest.skip("this sink does not support discard(pending)")
        token = writer.pending
        if token is None:  # e.g. the local sink's unnamed temporary files
            pytest.skip("writer.pending is None: the writer never leaves anything to discard")
        assert isinstance(token, str) and token, f"writer.pending is {token!r}"
        return token

    def test_discard_abandoned_writer(self, sink):
        key = "contract/discard/abandoned.bin"
        data = payload(MiB + 5, seed=11)
        writer = sink.open_writer(key)
        token = self._pending(writer)
        writer.write(data)
        sink.discard(token)  # as the next run does after a crash
        sink.discard(token)  # idempotent
        try:
            with pytest.raises(SinkError):
                writer.commit(sha256_digests(data))
        finally:
            writer.abort()
        assert_absent(sink, key, "after discard")

    def test_discard_aborted_writer(self, sink):
        key = "contract/discard/aborted.bin"
        writer = sink.open_writer(key)
        token = self._pending(writer)
        writer.write(b"half")
        writer.abort()
        sink.discard(token)
        assert_absent(sink, key, "discard after abort")
