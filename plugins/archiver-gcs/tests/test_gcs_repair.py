"""``GCSSink.open_repair_writer`` (``archiver repair``) against a real fake-gcs-server: the
good bytes become the live generation, the damaged one stays noncurrent; no versioning,
no replacing."""

from __future__ import annotations

import uuid

import pytest

from archiver.errors import ConflictError, SinkError
from archiver.testing.sink_contract import payload, sha256_digests, store

MiB = 1 << 20


@pytest.fixture
def versioned(gcs_client) -> str:
    bucket = gcs_client.bucket(f"archiver-v-{uuid.uuid4().hex[:8]}")
    bucket.versioning_enabled = True
    return gcs_client.create_bucket(bucket).name


def repair(sink, key: str, data: bytes):
    writer = sink.open_repair_writer(key)
    try:
        for i in range(0, len(data), 300_000):
            writer.write(data[i:i + 300_000])
        return writer.commit(sha256_digests(data))
    except BaseException:
        writer.abort()
        raise


@pytest.mark.parametrize("size", [4096, 2 * MiB], ids=["simple", "resumable"])
def test_damaged_object_becomes_a_noncurrent_generation(make_sink, gcs_client, versioned,
                                                        size):
    sink = make_sink(bucket=versioned, simple_upload_threshold=1 * MiB)
    good = payload(size, seed=50)
    store(sink, "r/obj.bin", good)
    blob = gcs_client.bucket(versioned).blob(sink.object_name("r/obj.bin"))
    blob.upload_from_string(b"x" + good[1:])
    bad = blob.generation

    stored = repair(sink, "r/obj.bin", good)
    assert not stored.existed
    assert stored.extra["replaced"]["generation"] == str(bad)
    assert stored.extra["replaced"]["kept_at"].endswith(f"#{bad}")
    live = gcs_client.bucket(versioned).get_blob(sink.object_name("r/obj.bin"))
    assert live.download_as_bytes() == good and live.generation != bad
    assert sink.stat("r/obj.bin").digests["sha256"] == sha256_digests(good)["sha256"]
    old = gcs_client.bucket(versioned).blob(sink.object_name("r/obj.bin"), generation=bad)
    assert old.download_as_bytes() == b"x" + good[1:]


def test_key_changed_after_open_is_compared_not_replaced(make_sink, gcs_client, versioned):
    sink = make_sink(bucket=versioned)
    good = payload(3000, seed=51)
    store(sink, "r/a.bin", good)
    blob = gcs_client.bucket(versioned).blob(sink.object_name("r/a.bin"))
    blob.upload_from_string(b"damaged")
    writer = sink.open_repair_writer("r/a.bin")
    blob.upload_from_string(b"someone else")  # after repair looked at the key
    writer.write(good)
    with pytest.raises(ConflictError):
        writer.commit(sha256_digests(good))
    writer.abort()
    assert blob.download_as_bytes() == b"someone else"


def test_unversioned_bucket_is_refused_with_what_to_do(make_sink, gcs_client, bucket_name):
    sink = make_sink()
    good = payload(3000, seed=52)
    store(sink, "r/b.bin", good)
    blob = gcs_client.bucket(bucket_name).blob(sink.object_name("r/b.bin"))
    blob.upload_from_string(b"damaged")
    with pytest.raises(SinkError) as exc:
        sink.open_repair_writer("r/b.bin")
    assert "--versioning" in str(exc.value) and "gcs-test" in str(exc.value)
    assert blob.download_as_bytes() == b"damaged"
    blob.delete()  # a missing object needs no versioning: it is simply written again
    assert not repair(sink, "r/b.bin", good).existed
    assert blob.download_as_bytes() == good
