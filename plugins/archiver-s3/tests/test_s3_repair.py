"""``S3Sink.open_repair_writer`` (``archiver repair``) against a real moto server: the good
bytes become the newest version, the damaged one stays; no versioning, no replacing."""

from __future__ import annotations

import pytest
from s3_testing import MiB, uploads

from archiver.errors import ConflictError, SinkError
from archiver.testing.sink_contract import payload, sha256_digests, store

SMALL = dict(part_size=5 * MiB, multipart_threshold=5 * MiB)


@pytest.fixture
def versioned(s3, new_bucket):
    def make(lock: bool = False) -> str:
        name = new_bucket(lock=lock)
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name
    return make


def repair(sink, key: str, data: bytes):
    writer = sink.open_repair_writer(key)
    try:
        for i in range(0, len(data), 1 * MiB + 17):
            writer.write(data[i:i + 1 * MiB + 17])
        return writer.commit(sha256_digests(data))
    except BaseException:
        writer.abort()
        raise


def versions(s3, bucket: str, key: str) -> list[bytes]:
    found = s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions") or []
    return [s3.get_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])["Body"].read()
            for v in sorted(found, key=lambda v: v["LastModified"])]


@pytest.mark.parametrize("size", [4096, 7 * MiB], ids=["put", "multipart"])
def test_damaged_object_becomes_an_older_version(make_sink, s3, versioned, size):
    bucket = versioned()
    sink = make_sink(bucket=bucket, **SMALL)
    good = payload(size, seed=40)
    store(sink, "r/obj.bin", good)
    damaged = b"x" + good[1:]
    bad = s3.put_object(Bucket=bucket, Key="r/obj.bin", Body=damaged)["VersionId"]

    stored = repair(sink, "r/obj.bin", good)
    assert not stored.existed
    assert stored.extra["replaced"]["version_id"] == bad
    assert bad in stored.extra["replaced"]["kept_at"]
    assert s3.get_object(Bucket=bucket, Key="r/obj.bin")["Body"].read() == good
    assert sink.stat("r/obj.bin").digests["sha256"] == sha256_digests(good)["sha256"]
    assert s3.get_object(Bucket=bucket, Key="r/obj.bin", VersionId=bad)["Body"].read() \
        == damaged
    assert uploads(s3, bucket) == []


def test_key_changed_after_open_is_compared_not_replaced(make_sink, s3, versioned):
    bucket = versioned()
    sink = make_sink(bucket=bucket)
    good = payload(3000, seed=41)
    store(sink, "r/a.bin", good)
    s3.put_object(Bucket=bucket, Key="r/a.bin", Body=b"damaged")
    writer = sink.open_repair_writer("r/a.bin")
    s3.put_object(Bucket=bucket, Key="r/a.bin", Body=b"someone else")  # after the look
    writer.write(good)
    with pytest.raises(ConflictError):
        writer.commit(sha256_digests(good))
    writer.abort()
    assert s3.get_object(Bucket=bucket, Key="r/a.bin")["Body"].read() == b"someone else"

    s3.put_object(Bucket=bucket, Key="r/a.bin", Body=b"damaged")
    writer = sink.open_repair_writer("r/a.bin")
    s3.put_object(Bucket=bucket, Key="r/a.bin", Body=good)  # another repair got there first
    writer.write(good)
    assert writer.commit(sha256_digests(good)).existed  # repaired meanwhile: same bytes


def test_unversioned_bucket_is_refused_with_what_to_do(make_sink, s3, bucket):
    sink = make_sink()
    good = payload(3000, seed=42)
    store(sink, "r/b.bin", good)
    s3.put_object(Bucket=bucket, Key="r/b.bin", Body=b"damaged")
    with pytest.raises(SinkError) as exc:
        sink.open_repair_writer("r/b.bin")
    assert "put-bucket-versioning" in str(exc.value) and "s3-test" in str(exc.value)
    assert s3.get_object(Bucket=bucket, Key="r/b.bin")["Body"].read() == b"damaged"
    # a missing object needs no versioning: it is simply written again
    s3.delete_object(Bucket=bucket, Key="r/b.bin")
    assert not repair(sink, "r/b.bin", good).existed
    assert s3.get_object(Bucket=bucket, Key="r/b.bin")["Body"].read() == good


def test_locked_damaged_version_stays_locked(make_sink, s3, versioned):
    bucket = versioned(lock=True)
    sink = make_sink(bucket=bucket, object_lock={"mode": "GOVERNANCE", "retain_days": 1})
    good = payload(3000, seed=43)
    store(sink, "r/c.bin", good)
    locked = s3.head_object(Bucket=bucket, Key="r/c.bin")["VersionId"]
    s3.put_object(Bucket=bucket, Key="r/c.bin", Body=b"damaged")
    # the stored bytes were replaced by a new version; repair puts the good ones on top
    stored = repair(sink, "r/c.bin", good)
    assert stored.extra["object_lock_mode"] == "GOVERNANCE"
    head = s3.head_object(Bucket=bucket, Key="r/c.bin", VersionId=locked)
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert versions(s3, bucket, "r/c.bin") == [good, b"damaged", good]
