import bz2
import functools
import gzip
import lzma
import random
import tracemalloc
import zlib

import pytest
import zstandard
from pydantic import ValidationError

from archiver.default_plugins.decompress import DecompressTransform
from archiver.default_plugins.decompress_formats import sniff
from archiver.errors import TransformError
from archiver.plugins import build_plugin_manager
from archiver.testing.transform_contract import (
    TransformContract,
    check_transform_rejects,
    sample_context,
)

MiB = 1 << 20
TEXT = b"".join(b"line %d: the quick brown fox\n" % i for i in range(20_000))  # ~600 KB
NOISE = random.Random(3).randbytes(150_000)  # incompressible: spans several 64 KiB slices


def make(**config) -> DecompressTransform:
    return DecompressTransform(DecompressTransform.Config(**config))


def factory(**config):
    transform = make(**config)
    return lambda: transform.stage(sample_context())


def decompress(data: bytes, chunk: int = MiB, **config):
    """Feed ``data`` in ``chunk``-sized pieces; return (output, facts, chunks fed)."""
    stage, out, fed = make(**config).stage(sample_context()), [], 0
    for i in range(0, len(data), chunk):
        fed += 1
        out.append(stage.feed(data[i:i + chunk]))
    out.append(stage.finish())
    return b"".join(out), stage.facts(), fed


def zstd(data: bytes, **params) -> bytes:
    return zstandard.ZstdCompressor(level=3, **params).compress(data)


def legacy_lzma(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_ALONE)


COMPRESSORS = {
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "lzma": legacy_lzma,
    "zstd": zstd,
}


def bomb_members(members: int) -> bytes:
    """A valid multi-member gzip: ``members`` MiB of zeros, ~1 KiB each (10 MiB -> 10 GiB
    for 10240 members)."""
    return gzip.compress(bytes(MiB), 9) * members


def bomb_stream(mebibytes: int) -> bytes:
    """One gzip member expanding to ``mebibytes`` MiB of zeros, built without
    materialising them: after a full flush deflate restarts, so the compressed form of
    each further MiB of zeros is identical and can be repeated. The trailer is omitted;
    a guard must stop long before it would be read."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    assert again == c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + first + again * (mebibytes - 1)


def peak_memory(fn):
    """Run ``fn``; return (the TransformError it raised or None, peak bytes traced)."""
    tracemalloc.start()
    try:
        fn()
        return None, tracemalloc.get_traced_memory()[1]
    except TransformError as exc:
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- contract

@functools.cache
def _good_inputs() -> tuple[bytes, ...]:
    inputs = [b"", b"x", b"plain text, not compressed\n" * 10, NOISE]
    for compress in COMPRESSORS.values():
        inputs += [compress(TEXT), compress(NOISE), compress(b"")]
    inputs.append(gzip.compress(b"one") + gzip.compress(b"") + gzip.compress(NOISE))
    inputs.append(zstd(b"a") + zstd(TEXT) + bytes(8) + zstd(b""))
    inputs.append(lzma.compress(b"a") + bytes(4) + lzma.compress(b"b"))
    return tuple(inputs)


@functools.cache
def _bad_inputs() -> tuple[bytes, ...]:
    bad = [b"\x1f\x8b", b"\x1f\x8b" + b"garbage" * 10, b"BZh9 not really bzip2",
           b"\xfd7zXZ\x00" + bytes(30), b"\x28\xb5\x2f\xfd" + b"\xff" * 20]
    for compress in COMPRESSORS.values():
        whole = compress(TEXT)
        bad += [whole[:len(whole) // 2], whole[:-1]]
    gz = bytearray(gzip.compress(TEXT))
    gz[-6] ^= 0xFF  # CRC32 in the trailer
    bad += [bytes(gz), gzip.compress(b"a") + b"trailing garbage", legacy_lzma(b"a") + b"zz"]
    return tuple(bad)


class TestDecompressContract(TransformContract):
    @pytest.fixture
    def transform(self):
        return make()

    @pytest.fixture
    def sample_inputs(self):
        return list(_good_inputs())

    @pytest.fixture
    def bad_inputs(self):
        return list(_bad_inputs())


class TestDecompressFailModeContract(TransformContract):
    rounds = 5

    @pytest.fixture
    def transform(self):
        return make(formats=["gzip", "zstd"], on_uncompressed="fail")

    @pytest.fixture
    def sample_inputs(self):
        return [gzip.compress(TEXT), zstd(NOISE)]

    @pytest.fixture
    def bad_inputs(self):
        return [b"", b"x", NOISE, bz2.compress(TEXT), lzma.compress(b"abc")]


# --------------------------------------------------------------------------- formats

@pytest.mark.parametrize("fmt", sorted(COMPRESSORS))
def test_each_format_round_trips(fmt):
    packed = COMPRESSORS[fmt](TEXT + NOISE)
    out, facts, _ = decompress(packed, chunk=4096)
    assert out == TEXT + NOISE
    assert facts == {"format": fmt, "input_bytes": len(packed),
                     "output_bytes": len(TEXT + NOISE), "members": 1}


def test_multi_member_gzip():
    packed = gzip.compress(b"first\n") + gzip.compress(b"") + gzip.compress(TEXT)
    out, facts, _ = decompress(packed, chunk=7)
    assert out == b"first\n" + TEXT
    assert facts["members"] == 3
    assert out == gzip.decompress(packed)  # the reference agrees


def test_multiple_streams_and_frames_with_padding():
    assert decompress(bz2.compress(b"a") + bz2.compress(b"b"))[0] == b"ab"
    assert decompress(lzma.compress(b"a") + bytes(8) + lzma.compress(b"b"))[0] == b"ab"
    skippable = (0x184D2A50).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    out, facts, _ = decompress(zstd(b"a") + skippable + zstd(b"b"), chunk=3)
    assert out == b"ab" and facts["members"] == 3
    assert decompress(gzip.compress(b"a") + bytes(512))[0] == b"a"  # tape-block padding


def test_only_enabled_formats_are_touched():
    packed = zstd(TEXT)
    out, facts, _ = decompress(packed, formats=["gzip"])
    assert out == packed and facts["format"] is None
    with pytest.raises(TransformError, match=r"zstd-compressed but formats is \[gzip\]"):
        decompress(packed, formats=["gzip"], on_uncompressed="fail")
    out, facts, _ = decompress(legacy_lzma(b"abc"), formats=["gzip"])
    assert facts["format"] is None
    assert decompress(legacy_lzma(b"abc"), formats=["xz"])[0] == b"abc"


def test_detection_needs_only_the_magic_and_refuses_lookalikes():
    assert sniff(b"\x1f\x8b") == "gzip"
    assert sniff(b"BZh") == "bzip2"
    assert sniff(b"\xfd7zXZ\x00") == "xz"
    assert sniff(b"\x28\xb5\x2f\xfd") == "zstd"
    assert sniff(legacy_lzma(b"x")[:13]) == "lzma"
    assert sniff(b"\x1f") is None and sniff(b"BZ") is None
    # ']' followed by text, or a dictionary size no encoder writes, is not .lzma
    assert sniff(b"]this is text") is None
    assert sniff(b"\x5d\x01\x02\x03\x04" + b"\xff" * 8) is None
    assert sniff(b"\x5d\x00\x00\x80\x00" + b"\x00" * 7 + b"\x01") is None  # size >= 256 GiB


# --------------------------------------------------------------------------- pass / fail

def test_uncompressed_passes_through_unchanged():
    stage = make().stage(sample_context())
    chunk = NOISE
    assert stage.feed(chunk) is chunk  # no copy once the format is known
    assert stage.feed(b"more") == b"more"
    assert stage.finish() == b""
    assert stage.facts() == {"format": None, "input_bytes": len(NOISE) + 4,
                             "output_bytes": len(NOISE) + 4, "members": 0}


def test_short_uncompressed_input_is_held_until_finish():
    stage = make().stage(sample_context())
    assert stage.feed(b"\x1f") == b""  # could still be gzip
    assert stage.feed(b"") == b""
    assert stage.finish() == b"\x1f"


def test_uncompressed_fails_when_configured():
    with pytest.raises(TransformError, match="not compressed.*on_uncompressed: fail"):
        decompress(b"plain text", on_uncompressed="fail")


def test_empty_artifact():
    out, facts, _ = decompress(b"")
    assert out == b"" and facts == {"format": None, "input_bytes": 0, "output_bytes": 0,
                                    "members": 0}
    with pytest.raises(TransformError, match="empty"):
        decompress(b"", on_uncompressed="fail")


# --------------------------------------------------------------------------- bad input

def test_truncated_gzip_is_an_error_never_a_short_output():
    packed = gzip.compress(TEXT)
    for cut in (len(packed) - 1, len(packed) - 8, len(packed) // 2, 10, 3):
        with pytest.raises(TransformError, match="gzip input is truncated.*member 1"):
            decompress(packed[:cut], chunk=1000)


@pytest.mark.parametrize("fmt", sorted(COMPRESSORS))
def test_truncated_input_of_every_format(fmt):
    packed = COMPRESSORS[fmt](TEXT)
    with pytest.raises(TransformError, match=f"{fmt} (input is truncated|data is corrupt)"):
        decompress(packed[:-3])


@pytest.mark.parametrize("fake", [
    b"\x1f\x8b" + b"\x00" * 40,
    b"\x1f\x8b" + b"looks like gzip, is not" * 3,
    b"BZh9" + b"x" * 40,
    b"\xfd7zXZ\x00" + b"\x01" * 40,
    b"\x28\xb5\x2f\xfd" + b"\xff" * 40,
])
def test_fake_magic_header_is_an_error(fake):
    with pytest.raises(TransformError, match="decompress: .* (is corrupt|is truncated)"):
        decompress(fake)


def test_corrupt_crc_and_trailing_garbage():
    packed = bytearray(gzip.compress(TEXT))
    packed[-6] ^= 0x01
    with pytest.raises(TransformError, match="gzip data is corrupt.*incorrect data check"):
        decompress(bytes(packed))
    with pytest.raises(TransformError, match="gzip data is corrupt .member 2"):
        decompress(gzip.compress(b"a") + b"trailing garbage")
    with pytest.raises(TransformError, match="trailing data after the lzma stream"):
        decompress(legacy_lzma(b"a") + b"trailing")


def test_feed_after_finish_and_second_finish_are_errors():
    stage = make().stage(sample_context())
    stage.finish()
    with pytest.raises(TransformError, match="after finish"):
        stage.feed(b"x")
    with pytest.raises(TransformError, match="twice"):
        stage.finish()


# --------------------------------------------------------------------------- bomb guards

def test_gzip_bomb_stops_at_max_output_bytes_with_bounded_memory():
    bomb = bomb_members(10240)  # ~10 MiB that would expand to 10 GiB
    assert len(bomb) < 11 * MiB
    stage = make(max_output_bytes=4 * MiB).stage(sample_context())
    fed = []

    def run():
        for i in range(0, len(bomb), MiB):
            fed.append(i)
            stage.feed(bomb[i:i + MiB])
        stage.finish()

    exc, peak = peak_memory(run)
    assert exc is not None
    assert "max_output_bytes=4194304" in str(exc) and "bomb" in str(exc)
    assert len(fed) == 1  # stopped inside the first chunk
    assert stage.facts()["output_bytes"] <= 4 * MiB + 1
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_gzip_bomb_stops_at_default_ratio():
    bomb = bomb_stream(10240)  # one member, 10 MiB -> 10 GiB
    stage = make().stage(sample_context())

    def run():
        for i in range(0, len(bomb), MiB):
            stage.feed(bomb[i:i + MiB])
        stage.finish()

    exc, peak = peak_memory(run)
    assert exc is not None
    assert "max_ratio=1000" in str(exc)
    assert stage.facts()["output_bytes"] <= 65 * MiB  # 1000 x the first 64 KiB slice
    assert peak < 100 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_bomb_after_ordinary_data_is_caught_by_the_local_ratio():
    ordinary = gzip.compress(random.Random(5).randbytes(3 * MiB), 1)
    with pytest.raises(TransformError, match="max_ratio=1000: input bytes") as info:
        decompress(ordinary + bomb_stream(2048))
    assert "bomb" in str(info.value)


def test_bomb_decision_does_not_depend_on_chunking():
    check_transform_rejects(factory(max_output_bytes=2 * MiB), [bomb_members(4)], rounds=3)


def test_high_ratio_below_the_grace_passes():
    zeros = gzip.compress(bytes(MiB // 2), 9)  # ratio ~1000, but only 512 KiB out
    assert decompress(zeros)[0] == bytes(MiB // 2)


def test_raising_the_limits_admits_the_same_data():
    data = bomb_members(3)
    out, facts, _ = decompress(data, max_ratio=2000)
    assert facts["output_bytes"] == 3 * MiB and out.count(0) == 3 * MiB


def test_zstd_bomb_stops_at_default_ratio():
    co = zstandard.ZstdCompressor(level=1).compressobj()
    bomb = b"".join(co.compress(bytes(MiB)) for _ in range(64)) + co.flush()
    assert len(bomb) < 8 << 10  # 64 MiB of zeros
    with pytest.raises(TransformError, match="zstd expands more than max_ratio"):
        decompress(bomb)


def test_zstd_frame_declaring_a_huge_window_is_refused():
    params = zstandard.ZstdCompressionParameters(window_log=30, write_content_size=False)
    huge = zstandard.ZstdCompressor(compression_params=params).compressobj()
    frame = huge.compress(b"tiny") + huge.flush()
    assert zstandard.get_frame_parameters(frame).window_size == 1 << 30
    with pytest.raises(TransformError, match="zstd frame .* window larger than "
                                             "max_window_bytes=134217728"):
        decompress(frame)


def test_zstd_window_limit_is_exact():
    params = zstandard.ZstdCompressionParameters(window_log=21, write_content_size=False)
    co = zstandard.ZstdCompressor(compression_params=params).compressobj()
    frame = co.compress(TEXT) + co.flush()
    assert decompress(frame, max_window_bytes="2MiB")[0] == TEXT
    with pytest.raises(TransformError, match="max_window_bytes=1048576"):
        decompress(frame, max_window_bytes="1MiB")


def test_xz_dictionary_beyond_max_window_bytes_is_refused():
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 0, "dict_size": 4 * MiB}]
    packed = lzma.compress(TEXT, filters=filters)
    assert decompress(packed)[0] == TEXT
    with pytest.raises(TransformError, match="xz stream .* more decoder memory"):
        decompress(packed, max_window_bytes="64KiB")


# --------------------------------------------------------------------------- keys

@pytest.mark.parametrize("key, config, expected", [
    ("p/j/data/artifacts/report.json.gz", {}, "p/j/data/artifacts/report.json"),
    ("report.json.GZIP", {}, "report.json"),
    ("a/b.bz2", {}, "a/b"),
    ("a/b.xz", {}, "a/b"),
    ("a/b.lzma", {}, "a/b"),
    ("a/b.zst", {}, "a/b"),
    ("a/b.ZSTD", {}, "a/b"),
    ("a/backup.tgz", {}, "a/backup.tar"),
    ("a/backup.tzst", {}, "a/backup.tar"),
    ("a/b.tar.gz", {}, "a/b.tar"),
    ("a/b.json.gz", {"keep_suffix": True}, "a/b.json.gz"),
    ("a/b.json.gz", {"formats": ["zstd"]}, "a/b.json.gz"),
    ("a/b.lzma", {"formats": ["gzip"]}, "a/b.lzma"),
    ("a/b.json", {}, "a/b.json"),
    ("a.gz/b", {}, "a.gz/b"),
    ("a/.gz", {}, "a/.gz"),
    ("a/..gz", {}, "a/..gz"),
    ("b.gz.gz", {}, "b.gz"),
])
def test_rename(key, config, expected):
    assert make(**config).rename(key) == expected


# --------------------------------------------------------------------------- config

def test_config_defaults_and_sizes():
    cfg = make().config
    assert cfg.formats == ["gzip", "bzip2", "xz", "zstd"]
    assert cfg.on_uncompressed == "pass" and cfg.keep_suffix is False
    assert cfg.max_output_bytes == 64 << 30 and cfg.max_ratio == 1000.0
    assert cfg.max_window_bytes == 128 << 20
    assert make(max_output_bytes="1GiB").config.max_output_bytes == 1 << 30


@pytest.mark.parametrize("config, fragment", [
    ({"formats": []}, "at least 1"),
    ({"formats": ["gzip", "gzip"]}, "listed twice"),
    ({"formats": ["brotli"]}, "brotli"),
    ({"on_uncompressed": "skip"}, "on_uncompressed"),
    ({"max_output_bytes": 0}, "max_output_bytes"),
    ({"max_ratio": 0.5}, "max_ratio"),
    ({"max_window_bytes": "4GiB"}, "max_window_bytes"),
    ({"max_outpt_bytes": 1}, "max_outpt_bytes"),
])
def test_config_is_validated(config, fragment):
    with pytest.raises(ValidationError) as info:
        DecompressTransform.Config(**config)
    assert fragment in str(info.value)


def test_registered_as_builtin(monkeypatch):
    monkeypatch.setenv("ARCHIVER_PLUGINS", "decompress,checksum")
    registry = build_plugin_manager(entry_points=False).registry
    assert registry.get("transform", "decompress") is DecompressTransform
    assert DecompressTransform.changes_bytes is True



def test_iter_feed_yields_the_same_bytes_in_bounded_pieces():
    packed = bomb_members(256)  # 256 MiB of zeros at ratio ~998: just allowed
    stage = make().stage(sample_context())
    sizes = []

    def run():
        for i in range(0, len(packed), MiB):
            sizes.extend(len(p) for p in stage.iter_feed(packed[i:i + MiB]))
        sizes.extend(len(p) for p in stage.iter_finish())

    exc, peak = peak_memory(run)
    assert exc is None
    assert sum(sizes) == 256 * MiB and max(sizes) <= MiB
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"
    plain = make().stage(sample_context())
    assert b"".join(plain.iter_feed(gzip.compress(TEXT))) + plain.finish() == TEXT
