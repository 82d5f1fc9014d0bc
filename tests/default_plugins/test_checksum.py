import hashlib

import pytest
from pydantic import ValidationError

from archiver.default_plugins.checksum import (
    ALGORITHMS,
    ChecksumStage,
    ChecksumTransform,
    crc32c_implementation,
    digest_stage,
)
from archiver.plugins import build_plugin_manager
from archiver.testing.transform_contract import (
    TransformContract,
    check_transform,
    default_inputs,
    sample_context,
)

ALL = list(ALGORITHMS)


def make(**config) -> ChecksumTransform:
    return ChecksumTransform(ChecksumTransform.Config(**config))


class TestChecksumContract(TransformContract):
    @pytest.fixture
    def transform(self):
        return make(algorithms=ALL)


class TestDefaultChecksumContract(TransformContract):
    @pytest.fixture
    def transform(self):
        return make()


def test_every_algorithm_matches_hashlib():
    transform = make(algorithms=[a for a in ALL if a != "crc32c"])
    inputs = default_inputs()
    runs = check_transform(lambda: transform.stage(sample_context()), inputs, rounds=5)
    for data, run in zip(inputs, runs, strict=True):
        assert run.output == data
        assert run.facts["size"] == len(data)
        for algorithm in ("sha256", "md5", "sha1", "sha512", "blake2b"):
            assert run.facts["digests"][algorithm] == hashlib.new(algorithm, data).hexdigest()


def test_crc32c_known_vector_and_width():
    stage = digest_stage(["crc32c"])
    stage.feed(b"12345")
    stage.feed(b"")
    stage.feed(b"6789")
    stage.finish()
    assert stage.facts() == {"digests": {"crc32c": "e3069283"}, "size": 9}
    empty = digest_stage(["crc32c"])
    empty.finish()
    assert empty.facts()["digests"]["crc32c"] == "00000000"  # zero-padded to 8 hex digits


def test_crc32c_accepts_non_bytes_chunks():
    stage = digest_stage(["crc32c", "sha256"])
    stage.feed(bytearray(b"1234"))
    stage.feed(memoryview(b"56789"))
    stage.finish()
    assert stage.facts()["digests"]["crc32c"] == "e3069283"
    assert stage.facts()["digests"]["sha256"] == hashlib.sha256(b"123456789").hexdigest()


def test_crc32c_implementation_is_reported():
    assert crc32c_implementation() in ("c", "python")


def test_feed_returns_the_same_object():
    stage = make(algorithms=ALL).stage(sample_context())
    chunk = bytes(range(256)) * 1000
    assert stage.feed(chunk) is chunk
    assert stage.finish() == b""


def test_default_is_sha256_and_declared():
    transform = make()
    assert transform.config.algorithms == ["sha256"]
    assert transform.digest_algorithms() == ("sha256",)
    assert transform.changes_bytes is False
    assert transform.rename("a/b.gz") == "a/b.gz"
    assert make(algorithms=["md5", "crc32c"]).digest_algorithms() == ("md5", "crc32c")


def test_facts_before_finish_and_cached_after():
    stage = ChecksumStage(["sha256"])
    stage.feed(b"abc")
    assert stage.facts()["digests"]["sha256"] == hashlib.sha256(b"abc").hexdigest()
    stage.finish()
    assert stage.facts() is stage.facts()


@pytest.mark.parametrize("algorithms, fragment", [
    ([], "at least 1"),
    (["sha256", "sha256"], "listed twice"),
    (["sha3_256"], "sha3_256"),
    ("sha256", "list"),
])
def test_config_is_validated(algorithms, fragment):
    with pytest.raises(ValidationError) as info:
        ChecksumTransform.Config(algorithms=algorithms)
    assert fragment in str(info.value)


def test_config_refuses_unknown_keys():
    with pytest.raises(ValidationError, match="algorithm"):
        ChecksumTransform.Config(algorithm=["md5"])


def test_digest_stage_refuses_unknown_algorithms():
    with pytest.raises(ValueError, match="sha3_256"):
        digest_stage(["sha3_256"])
    with pytest.raises(ValueError):
        digest_stage([])


def test_registered_as_builtin(monkeypatch):
    monkeypatch.setenv("ARCHIVER_PLUGINS", "checksum")
    plugins = build_plugin_manager(entry_points=False)
    assert plugins.registry.get("transform", "checksum") is ChecksumTransform
    assert plugins.registry.owner("transform", "checksum") == "checksum"
