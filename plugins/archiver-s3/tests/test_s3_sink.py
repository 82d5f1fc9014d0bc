"""Uploads, checksums, no-overwrite, Object Lock and options, against a real moto server."""

from __future__ import annotations

import base64
import hashlib
import threading
import zlib
from datetime import date, datetime, timedelta, timezone

import crc32c
import pytest
from s3_testing import MiB, uploads

from archiver.errors import ConflictError, SinkError
from archiver.testing.sink_contract import payload, sha256_digests, store

SMALL = dict(part_size=5 * MiB, multipart_threshold=5 * MiB)


def b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def b64crc32c(data: bytes) -> str:
    return base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()


def write_all(writer, data: bytes, chunk: int = 1 * MiB + 17) -> None:
    for i in range(0, len(data), chunk):
        writer.write(data[i:i + chunk])


# ---------------------------------------------------------------------- upload paths
def test_small_object_is_one_put_and_large_one_multipart(make_sink, s3, bucket):
    sink = make_sink(**SMALL)
    small, large = payload(3 * MiB, seed=1), payload(12 * MiB + 5, seed=2)
    w_small = sink.open_writer("a/small.bin")
    write_all(w_small, small)
    w_small.commit(sha256_digests(small))
    w_large = sink.open_writer("a/large.bin")
    write_all(w_large, large)
    assert w_large.upload_id, "12 MiB above a 5 MiB threshold must start a multipart upload"
    stored = w_large.commit(sha256_digests(large))

    assert w_small.upload_id is None and w_small.stats["parts"] == 0
    assert "-" not in s3.head_object(Bucket=bucket, Key="a/small.bin")["ETag"]
    assert w_large.stats["parts"] == 3  # 5 + 5 + 2 MiB
    assert s3.head_object(Bucket=bucket, Key="a/large.bin")["ETag"].endswith('-3"')
    assert stored.size == len(large) and stored.existed is False
    assert s3.get_object(Bucket=bucket, Key="a/large.bin")["Body"].read() == large
    assert uploads(s3, bucket) == []


def test_threshold_below_part_size_still_uploads_whole_parts(make_sink, s3, bucket):
    sink = make_sink(part_size=5 * MiB, multipart_threshold=1 * MiB)
    data = payload(11 * MiB, seed=3)
    writer = sink.open_writer("odd.bin")
    write_all(writer, data, chunk=3 * MiB + 1)
    writer.commit(sha256_digests(data))
    assert writer.stats["parts"] == 3
    assert s3.get_object(Bucket=bucket, Key="odd.bin")["Body"].read() == data


def test_threshold_above_part_size_cuts_the_buffer_into_parts(make_sink, s3, bucket):
    sink = make_sink(part_size=5 * MiB, multipart_threshold=12 * MiB)
    data = payload(23 * MiB + 3, seed=4)
    writer = sink.open_writer("cut.bin")
    write_all(writer, data, chunk=2 * MiB + 7)
    writer.commit(sha256_digests(data))
    assert writer.stats["parts"] == 5  # 5 + 5 + 5 + 5 + 3 MiB
    assert s3.get_object(Bucket=bucket, Key="cut.bin")["Body"].read() == data


MEMORY_PROBE = """
import hashlib, os, sys, tracemalloc
from archiver_s3.sink import S3Sink
url, bucket, region = sys.argv[1:4]
sink = S3Sink(S3Sink.Config(endpoint_url=url, region=region, bucket=bucket,
                            part_size="5MiB", multipart_threshold="5MiB",
                            max_parts_in_flight=2), "probe")
chunk, digest = os.urandom((1 << 20) + 17), hashlib.sha256()
warm = sink.open_writer("mem/warm-up.bin")  # boto3 loads its models on first use
for _ in range(11):
    warm.write(chunk)
warm.commit({"sha256": hashlib.sha256(chunk * 11).hexdigest()})
writer = sink.open_writer("mem/bound.bin")
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
for _ in range(97):  # ~97 MiB: 20 parts
    writer.write(chunk)
    digest.update(chunk)
writer.commit({"sha256": digest.hexdigest()})
print(tracemalloc.get_traced_memory()[1] - base, writer.stats["parts"],
      sink.config.memory_bound())
"""


def test_memory_stays_within_the_declared_bound(moto_endpoint, bucket):
    """Peak Python memory of a writer streaming 20 parts (in its own process, so that the
    in-process moto server's objects do not count) stays within the declared bound plus
    one part while the threshold buffer is cut, one chunk and 3 MiB for boto3's objects."""
    import os
    import subprocess
    import sys

    from s3_testing import REGION

    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, moto_endpoint, bucket, REGION],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak, parts, declared = map(int, proc.stdout.split())
    assert (parts, declared) == (20, 15 * MiB)
    assert peak <= declared + 5 * MiB + (MiB + 17) + 3 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_bodies_reach_the_signer_as_seekable_views_not_copies(make_sink, s3, bucket):
    """boto3 with botocore[crt] copies a bytes-like body into a BytesIO to sign it (one
    more part-sized copy per part in flight: measured 302 MiB peak RSS for a 1 GiB upload
    against 176 MiB without); a seekable body it reads in place. Observed through
    botocore's own before-sign event, on PutObject and UploadPart alike."""
    sink = make_sink(**SMALL)
    seen = []
    sink.client.meta.events.register(
        "before-sign.s3", lambda request, **kw: seen.append((kw.get("operation_name"),
                                                             type(request.body))))
    for key, size in (("one-put.bin", 2 * MiB), ("parts.bin", 11 * MiB)):
        data = payload(size, seed=size)
        writer = sink.open_writer(key)
        write_all(writer, data)
        writer.commit(sha256_digests(data))
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    bodies = {op: kind for op, kind in seen if op in ("PutObject", "UploadPart")}
    assert set(bodies) == {"PutObject", "UploadPart"}
    for kind in bodies.values():
        assert hasattr(kind, "seek") and not issubclass(kind, (bytes, bytearray))


# ---------------------------------------------------------------------- checksums
def test_sha256_checksums_recorded(make_sink, s3, bucket):
    sink = make_sink(**SMALL)
    small, large = payload(1000, seed=4), payload(11 * MiB, seed=5)
    one = store(sink, "c/one.bin", small)
    multi = store(sink, "c/multi.bin", large)

    assert one.provider_checksum == {"algorithm": "SHA256", "value": b64sha256(small),
                                     "type": "FULL_OBJECT"}
    parts = [large[i:i + 5 * MiB] for i in range(0, len(large), 5 * MiB)]
    composite = b64sha256(b"".join(hashlib.sha256(p).digest() for p in parts))
    assert multi.provider_checksum == {"algorithm": "SHA256", "value": composite,
                                       "type": "COMPOSITE", "parts": "3"}
    # The composite above was computed by the server from the part bytes it received.
    head = s3.head_object(Bucket=bucket, Key="c/multi.bin", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"].partition("-")[0] == composite
    assert multi.provider_checksum["value"] != b64sha256(large)  # composite, not a digest


def test_crc32c_checksums_are_real_crc32c(make_sink, s3, bucket):
    assert crc32c.crc32c(b"123456789") == 0xE3069283  # the crc32c package moto relies on
    sink = make_sink(checksum_algorithm="CRC32C", **SMALL)
    small, large = payload(2000, seed=6), payload(12 * MiB, seed=7)
    one = store(sink, "crc/one.bin", small)
    multi = store(sink, "crc/multi.bin", large)

    assert one.provider_checksum == {"algorithm": "CRC32C", "value": b64crc32c(small),
                                     "type": "FULL_OBJECT"}
    # moto computes the full-object CRC32C of a multipart upload itself: with the
    # crc32c package missing it would silently compute zlib's CRC32 instead.
    head = s3.head_object(Bucket=bucket, Key="crc/multi.bin", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32C"] == b64crc32c(large)
    assert head["ChecksumCRC32C"] != base64.b64encode(
        zlib.crc32(large).to_bytes(4, "big")).decode()
    assert multi.provider_checksum == {"algorithm": "CRC32C", "value": b64crc32c(large),
                                       "type": "FULL_OBJECT"}


def test_sha256_kept_in_metadata_or_tag(make_sink, s3, bucket):
    sink = make_sink(**SMALL)
    small, large = payload(100, seed=8), payload(6 * MiB, seed=9)
    store(sink, "m/small.bin", small, metadata={"job-id": "j-1"})
    store(sink, "m/large.bin", large)

    head = s3.head_object(Bucket=bucket, Key="m/small.bin")
    assert head["Metadata"]["sha256"] == hashlib.sha256(small).hexdigest()
    assert head["Metadata"]["job-id"] == "j-1"
    tags = s3.get_object_tagging(Bucket=bucket, Key="m/large.bin")["TagSet"]
    assert {"Key": "archiver-sha256", "Value": hashlib.sha256(large).hexdigest()} in tags
    assert sink.stat("m/small.bin").digests == sha256_digests(small)
    found = sink.stat("m/large.bin")
    assert found.digests == sha256_digests(large) and found.extra["sha256_source"] == "tag"


def test_commit_refuses_digest_of_other_bytes(make_sink, s3, bucket):
    sink = make_sink()
    writer = sink.open_writer("wrong-digest.bin")
    writer.write(b"actual bytes")
    with pytest.raises(SinkError, match="sha256"):
        writer.commit(sha256_digests(b"other bytes"))
    writer.abort()
    assert sink.stat("wrong-digest.bin") is None


# ---------------------------------------------------------------------- no overwrite
@pytest.mark.parametrize("size", [4096, 7 * MiB], ids=["put", "multipart"])
def test_identical_rerun_is_existed_and_different_is_conflict(make_sink, s3, bucket, size):
    sink = make_sink(**SMALL)
    old, new = payload(size, seed=10), payload(size, seed=11)
    first = store(sink, "x/obj.bin", old)
    before = s3.head_object(Bucket=bucket, Key="x/obj.bin")

    again = store(sink, "x/obj.bin", old)
    assert (first.existed, again.existed) == (False, True)
    writer = sink.open_writer("x/obj.bin")
    write_all(writer, new)
    with pytest.raises(ConflictError) as exc:
        writer.commit(sha256_digests(new))
    writer.abort()

    assert "x/obj.bin" in str(exc.value) and "s3-test" in str(exc.value)
    after = s3.head_object(Bucket=bucket, Key="x/obj.bin")
    assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])
    assert s3.get_object(Bucket=bucket, Key="x/obj.bin")["Body"].read() == old
    assert uploads(s3, bucket) == []


def test_existing_object_without_our_digest_is_read_and_hashed(make_sink, s3, bucket):
    data = payload(3000, seed=12)
    s3.put_object(Bucket=bucket, Key="foreign.bin", Body=data)  # no metadata, CRC32 only
    sink = make_sink()
    assert store(sink, "foreign.bin", data).extra["sha256_source"] == "read"
    with pytest.raises(ConflictError):
        store(sink, "foreign.bin", data + b"!")
    assert s3.get_object(Bucket=bucket, Key="foreign.bin")["Body"].read() == data


# ---------------------------------------------------------------------- object lock
def test_object_lock_on_put(make_sink, s3, new_bucket):
    locked = new_bucket(lock=True)
    sink = make_sink(bucket=locked, object_lock={"mode": "COMPLIANCE", "retain_days": 2,
                                                 "legal_hold": True})
    sink.preflight()
    start = datetime.now(timezone.utc)
    stored = store(sink, "lock/a.bin", payload(500, seed=13))
    head = s3.head_object(Bucket=locked, Key="lock/a.bin")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockLegalHoldStatus"] == "ON"
    until = head["ObjectLockRetainUntilDate"]
    assert start + timedelta(days=2) - timedelta(minutes=5) <= until \
        <= datetime.now(timezone.utc) + timedelta(days=2)
    assert stored.extra["object_lock_mode"] == "COMPLIANCE"
    assert stored.extra["object_lock_legal_hold"] == "ON"
    # moto has no GetObjectRetention; the legal hold API is there.
    assert s3.get_object_legal_hold(Bucket=locked, Key="lock/a.bin")["LegalHold"]["Status"] \
        == "ON"


def test_object_lock_retain_until_date_and_multipart_request(make_sink, s3, new_bucket):
    locked = new_bucket(lock=True)
    day = date.today() + timedelta(days=30)
    sink = make_sink(bucket=locked, object_lock={"mode": "GOVERNANCE", "retain_until": day},
                     **SMALL)
    store(sink, "lock/small.bin", b"governed")
    head = s3.head_object(Bucket=locked, Key="lock/small.bin")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert head["ObjectLockRetainUntilDate"] == datetime(day.year, day.month, day.day,
                                                         tzinfo=timezone.utc)
    assert "ObjectLockLegalHoldStatus" not in head or \
        head["ObjectLockLegalHoldStatus"] == "OFF"

    # moto drops Object Lock headers of CreateMultipartUpload, so look at what is sent.
    sent = []
    sink.client.meta.events.register(
        "before-send.s3.CreateMultipartUpload",
        lambda request, **kw: sent.append(dict(request.headers)))
    store(sink, "lock/large.bin", payload(6 * MiB, seed=14))
    assert len(sent) == 1
    assert sent[0]["x-amz-object-lock-mode"] == b"GOVERNANCE"
    assert sent[0]["x-amz-object-lock-retain-until-date"].startswith(day.isoformat().encode())


# ---------------------------------------------------------------------- options
@pytest.mark.parametrize("size", [1000, 6 * MiB], ids=["put", "multipart"])
def test_sse_storage_class_metadata_and_tags(make_sink, s3, bucket, size):
    sink = make_sink(sse="aws:kms", kms_key_id="alias/archive", storage_class="STANDARD_IA",
                     metadata={"owner": "records-team"},
                     tags={"retention": "10y", "team": "records"}, **SMALL)
    store(sink, "opt/obj.bin", payload(size, seed=15))
    head = s3.head_object(Bucket=bucket, Key="opt/obj.bin")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith("alias/archive")
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["Metadata"]["owner"] == "records-team"
    tags = {t["Key"]: t["Value"]
            for t in s3.get_object_tagging(Bucket=bucket, Key="opt/obj.bin")["TagSet"]}
    assert tags["retention"] == "10y" and tags["team"] == "records"


def test_metadata_values_are_made_header_safe(make_sink, s3, bucket):
    sink = make_sink()
    store(sink, "meta.bin", b"x", metadata={"Job ID": "j\u00e9b/100%\n"})
    head = s3.head_object(Bucket=bucket, Key="meta.bin")
    assert head["Metadata"]["job-id"] == "j%C3%A9b/100%25%0A"


@pytest.mark.parametrize("prefix", ["archive", "archive/", "/archive//"])
def test_prefix_normalised(make_sink, s3, bucket, prefix):
    sink = make_sink(prefix=prefix)
    stored = store(sink, "p/j/data/x.bin", b"abc")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["archive/p/j/data/x.bin"]
    assert stored.key == "p/j/data/x.bin"
    assert sink.describe("p/j/data/x.bin") == f"s3://{bucket}/archive/p/j/data/x.bin"
    assert stored.location == sink.describe("p/j/data/x.bin")


# ---------------------------------------------------------------------- memory bound
class Gate:
    """Holds UploadPart requests (a botocore event hook) until ``release``."""

    def __init__(self, sink):
        self._open = threading.Event()
        sink.client.meta.events.register("before-send.s3.UploadPart", self)

    def __call__(self, **kwargs):
        self._open.wait(60)

    def release(self):
        self._open.set()


def wait_for(predicate, what: str) -> None:
    done = threading.Event()
    for _ in range(2000):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError(f"never happened: {what}")


def test_parts_in_flight_never_exceed_bound(make_sink, s3, bucket):
    sink = make_sink(max_parts_in_flight=2, **SMALL)
    data = payload(31 * MiB, seed=16)
    writer = sink.open_writer("mem/big.bin")
    gate = Gate(sink)
    result = {}

    def produce():
        try:
            write_all(writer, data)
            result["ok"] = True
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=produce)
    thread.start()
    # With every upload held, the writer must stop at two parts in flight and wait,
    # rather than read on and queue more parts in memory.
    wait_for(lambda: writer.stats["waits"] or not thread.is_alive(), "writer blocked")
    assert thread.is_alive() and not result, "write() did not block at the bound"
    assert writer.stats["in_flight"] == 2
    gate.release()
    thread.join(60)
    assert result == {"ok": True}
    writer.commit(sha256_digests(data))
    assert writer.stats["max_in_flight"] == 2 and writer.stats["parts"] == 7
    assert s3.get_object(Bucket=bucket, Key="mem/big.bin")["Body"].read() == data


def test_abort_from_another_thread_wakes_a_blocked_writer(make_sink, s3, bucket):
    sink = make_sink(max_parts_in_flight=1, **SMALL)
    writer = sink.open_writer("sig/big.bin")
    gate = Gate(sink)
    result = {}

    def produce():
        try:
            write_all(writer, payload(20 * MiB, seed=17))
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=produce)
    thread.start()
    wait_for(lambda: writer.stats["waits"], "writer blocked")
    aborter = threading.Thread(target=writer.abort)  # as a SIGTERM handler would
    aborter.start()
    thread.join(60)
    assert isinstance(result.get("error"), SinkError) and "aborted" in str(result["error"])
    gate.release()
    aborter.join(60)
    assert not aborter.is_alive()
    assert uploads(s3, bucket) == [] and sink.stat("sig/big.bin") is None


# ---------------------------------------------------------------------- failures
def test_upload_lost_mid_way_leaves_nothing_and_next_run_completes(make_sink, s3, bucket):
    sink = make_sink(**SMALL)
    data = payload(17 * MiB, seed=18)
    writer = sink.open_writer("fail/obj.bin")
    write_all(writer, data[:11 * MiB])
    wait_for(lambda: writer.stats["parts"] == 2, "two parts uploaded")
    # The upload disappears on the server (an operator, a lifecycle rule): the next part
    # fails (real S3: 404 NoSuchUpload; moto: 500) and the commit must not succeed.
    s3.abort_multipart_upload(Bucket=bucket, Key="fail/obj.bin", UploadId=writer.upload_id)
    with pytest.raises(SinkError) as exc:
        write_all(writer, data[11 * MiB:])
        writer.commit(sha256_digests(data))
    assert "fail/obj.bin" in str(exc.value) and "uploading a part failed" in str(exc.value)
    writer.abort()
    assert sink.stat("fail/obj.bin") is None and uploads(s3, bucket) == []

    again = store(sink, "fail/obj.bin", data)  # the next run
    assert again.existed is False
    assert s3.get_object(Bucket=bucket, Key="fail/obj.bin")["Body"].read() == data
