"""Nothing unproven: what S3 holds after a commit is read back (size, checksum, Object
Lock), and transport faults between boto3 and moto (archiver.testing.faultproxy) are
retryable sink errors that never hang, never crash, and leave nothing half counted."""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timedelta, timezone

import pytest
from s3_testing import MiB, uploads

from archiver.errors import SinkError
from archiver.testing.faultproxy import Fault, FaultProxy
from archiver.testing.sink_contract import payload, sha256_digests, store
from archiver_s3.awserrors import RetryableSinkError

SMALL = dict(part_size=5 * MiB, multipart_threshold=5 * MiB)


def write_all(writer, data: bytes, chunk: int = 1 * MiB + 17) -> None:
    for i in range(0, len(data), chunk):
        writer.write(data[i:i + chunk])


def lock_fields(head: dict) -> dict:
    return {k: v for k, v in head.items() if k.startswith("ObjectLock")}


class Dropped:
    """A botocore ``before-send`` handler answering 200 without sending the request: a
    provider that acknowledges a call and does nothing (hooking botocore's own event
    system on a real client; nothing of boto3 is mocked)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, request, **kwargs):
        from botocore.awsrequest import AWSResponse

        self.calls += 1

        class Raw:
            def stream(self, **kw):
                return iter((b"",))

        return AWSResponse(request.url, 200, {"x-amz-request-id": "dropped"}, Raw())


def run_bounded(fn, seconds: float = 20.0):
    """``fn()`` on a daemon thread; fail (instead of hanging the suite) if it takes longer."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (hung)"
    if "error" in out:
        raise out["error"]
    return out["value"]


# ---------------------------------------------------------------------- Object Lock
def test_multipart_object_lock_is_read_back_and_applied(make_sink, s3, new_bucket):
    """moto ignores the Object Lock headers of CreateMultipartUpload: without the
    read-back, the object ends with no retention at all (head_object shows no
    ObjectLockMode). With it, the lock is applied after the fact and confirmed."""
    locked = new_bucket(lock=True)
    sink = make_sink(bucket=locked, object_lock={"mode": "COMPLIANCE", "retain_days": 3,
                                                 "legal_hold": True}, **SMALL)
    start = datetime.now(timezone.utc).replace(microsecond=0)
    data = payload(11 * MiB, seed=21)
    writer = sink.open_writer("lock/big.bin")
    write_all(writer, data)
    assert writer.upload_id
    stored = writer.commit(sha256_digests(data))
    end = datetime.now(timezone.utc)

    head = s3.head_object(Bucket=locked, Key="lock/big.bin")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockLegalHoldStatus"] == "ON"
    until = head["ObjectLockRetainUntilDate"]
    assert start + timedelta(days=3) <= until <= end + timedelta(days=3)
    # What is recorded is what S3 confirmed, read back after applying it.
    assert stored.extra["object_lock_mode"] == "COMPLIANCE"
    assert stored.extra["object_lock_legal_hold"] == "ON"
    assert datetime.fromisoformat(stored.extra["object_lock_retain_until"]) == until
    assert stored.extra["object_lock_applied_after_commit"] is True
    assert sink.retention_in_force("lock/big.bin") == {
        "mode": "COMPLIANCE", "retain_until": until.astimezone(timezone.utc).isoformat(),
        "legal_hold": True}


def test_single_put_lock_needs_no_second_request(make_sink, s3, new_bucket):
    locked = new_bucket(lock=True)
    sink = make_sink(bucket=locked, object_lock={"mode": "GOVERNANCE", "retain_days": 1})
    sent = []
    sink.client.meta.events.register("before-send.s3", lambda request, **kw: sent.append(
        kw.get("event_name", "")))
    stored = store(sink, "lock/small.bin", b"small")
    assert "object_lock_applied_after_commit" not in stored.extra
    assert stored.extra["object_lock_mode"] == "GOVERNANCE"
    assert "before-send.s3.PutObject" in sent and "before-send.s3.HeadObject" in sent
    assert not [e for e in sent if "PutObjectRetention" in e or "PutObjectLegalHold" in e]


def test_retention_refused_fails_the_commit_then_next_attempt_applies_it(
        make_sink, s3, new_bucket):
    """S3 acknowledges PutObjectRetention and PutObjectLegalHold but keeps nothing: the
    commit fails naming the sink, the key, what was wanted and what S3 holds."""
    locked = new_bucket(lock=True)
    options = dict(bucket=locked, object_lock={"mode": "GOVERNANCE", "retain_days": 2,
                                               "legal_hold": True}, **SMALL)
    sink = make_sink(**options)
    dropped = Dropped()
    for op in ("PutObjectRetention", "PutObjectLegalHold"):
        sink.client.meta.events.register(f"before-send.s3.{op}", dropped)
    data = payload(7 * MiB, seed=22)
    writer = sink.open_writer("lock/refused.bin")
    write_all(writer, data)
    with pytest.raises(SinkError) as exc:
        writer.commit(sha256_digests(data))
    writer.abort()
    message = str(exc.value)
    assert dropped.calls == 2
    assert "s3-test" in message and "lock/refused.bin" in message
    assert "wanted mode GOVERNANCE until" in message and "legal hold ON" in message
    assert "S3 holds no Object Lock" in message
    assert "not counted as archived" in message
    assert lock_fields(s3.head_object(Bucket=locked, Key="lock/refused.bin")) == {}

    # The next attempt finds the object (412), compares it and applies the lock.
    again = store(make_sink(**options), "lock/refused.bin", data)
    assert again.existed is True and again.extra["object_lock_applied_after_commit"]
    head = s3.head_object(Bucket=locked, Key="lock/refused.bin")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert head["ObjectLockLegalHoldStatus"] == "ON"
    assert head["ObjectLockRetainUntilDate"] > datetime.now(timezone.utc) + timedelta(days=1)
    assert uploads(s3, locked) == []


def test_bucket_without_object_lock_fails_the_commit(make_sink, s3, bucket):
    """A bucket without Object Lock refuses PutObjectRetention (moto ignores the lock
    headers of the multipart upload, as it does on any bucket)."""
    sink = make_sink(object_lock={"mode": "COMPLIANCE", "retain_days": 1}, **SMALL)
    data = payload(6 * MiB, seed=23)
    with pytest.raises(SinkError) as exc:
        store(sink, "plain/big.bin", data)
    message = str(exc.value)
    assert "plain/big.bin" in message and "wanted mode COMPLIANCE" in message
    assert "PutObjectRetention: InvalidRequest" in message
    assert "ObjectLockConfiguration" in message


def test_existing_object_with_shorter_lock_is_extended(make_sink, s3, new_bucket):
    """An object found at the key (a rerun, or an earlier run cut short) must hold the
    configured retention counted from its LastModified."""
    locked = new_bucket(lock=True)
    data = b"already there"
    s3.put_object(Bucket=locked, Key="lock/found.bin", Body=data,
                  Metadata={"sha256": hashlib.sha256(data).hexdigest()},
                  ObjectLockMode="GOVERNANCE",
                  ObjectLockRetainUntilDate=datetime.now(timezone.utc) + timedelta(hours=1))
    sink = make_sink(bucket=locked, object_lock={"mode": "GOVERNANCE", "retain_days": 10})
    stored = store(sink, "lock/found.bin", data)
    assert stored.existed is True
    until = s3.head_object(Bucket=locked, Key="lock/found.bin")["ObjectLockRetainUntilDate"]
    assert until > datetime.now(timezone.utc) + timedelta(days=9)


# ---------------------------------------------------------------------- the sha256 tag
@pytest.mark.parametrize("algorithm", ["SHA256", "CRC32C"])
def test_commit_through_412_adds_the_missing_sha256_tag(make_sink, s3, bucket, algorithm):
    """A kill between CompleteMultipartUpload and tagging leaves a complete object
    without ``archiver-sha256``; the retry's 412 path hashes the bytes and adds it."""
    data = payload(11 * MiB, seed=24)
    key = f"tag/{algorithm}.bin"
    up = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm=algorithm,
                                    Tagging="team=records")
    parts = []
    for n, start in enumerate(range(0, len(data), 5 * MiB), 1):
        resp = s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n,
                              Body=data[start:start + 5 * MiB], ChecksumAlgorithm=algorithm)
        parts.append({"PartNumber": n, "ETag": resp["ETag"],
                      f"Checksum{algorithm}": resp[f"Checksum{algorithm}"]})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": parts})
    sink = make_sink(checksum_algorithm=algorithm, **SMALL)
    assert sink.stat(key).digests == {}  # no digest anywhere: a rerun would not skip it

    again = store(sink, key, data)
    assert again.existed is True and again.extra["sha256_source"] == "read"
    tags = {t["Key"]: t["Value"]
            for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
    assert tags == {"archiver-sha256": hashlib.sha256(data).hexdigest(), "team": "records"}
    found = sink.stat(key)
    assert found.digests == sha256_digests(data) and found.extra["sha256_source"] == "tag"
    assert uploads(s3, bucket) == []


# ---------------------------------------------------------------------- transport faults
@pytest.fixture
def proxy(moto_endpoint):
    with FaultProxy(moto_endpoint, timeout=10) as p:
        yield p


def object_head(bucket: str, key: str):
    return lambda req: req.method == "HEAD" and req.path == f"/{bucket}/{key}"


@pytest.mark.parametrize("cut", [17, 60, 200, 330, 400, 480], ids=lambda n: f"at-{n}")
def test_head_cut_inside_its_headers_is_a_retryable_sink_error(make_sink, s3, bucket, proxy,
                                                               cut):
    """A connection closed inside HeadObject's headers gives botocore a "successful" HEAD
    lacking whatever came after the cut: never a KeyError, never a copy recorded without
    its checksum; the next attempt commits. (moto 5.2 sends ContentLength at about byte
    395 of a multipart object's HEAD and the checksum at about 470: cuts before 395 are a
    RetryableSinkError; at 400 the missing checksum is asked for again; at 480 the
    checksum value itself is cut, which fails as a mismatch.)"""
    sink = make_sink(endpoint=proxy.url, **SMALL)
    data = payload(6 * MiB, seed=25)
    writer = sink.open_writer(f"cut/{cut}.bin")
    write_all(writer, data)
    proxy.once(object_head(bucket, f"cut/{cut}.bin"), Fault(close_after=cut))
    try:
        stored = run_bounded(lambda: writer.commit(sha256_digests(data)))
    except SinkError as exc:
        assert isinstance(exc, RetryableSinkError) or cut > 395, exc
        assert "s3-test" in str(exc) and f"cut/{cut}.bin" in str(exc)
        writer.abort()
        stored = run_bounded(lambda: store(sink, f"cut/{cut}.bin", data))
        assert stored.existed is True
    assert [f for _r, f in proxy.applied] == [Fault(close_after=cut)]
    assert stored.size == len(data)
    assert stored.provider_checksum["algorithm"] == "SHA256"  # never recorded without it
    assert s3.get_object(Bucket=bucket, Key=f"cut/{cut}.bin")["Body"].read() == data
    assert uploads(s3, bucket) == []


@pytest.mark.parametrize("size,operation", [(2 * MiB, "PutObject"),
                                            (11 * MiB, "UploadPart")])
def test_connection_closed_after_100_continue_does_not_hang(make_sink, s3, bucket, proxy,
                                                            size, operation):
    """A connection closed right after ``HTTP/1.1 100 Continue`` makes botocore read a
    closed socket forever (100 % CPU) if the request carried ``Expect: 100-continue``,
    which botocore adds to every file-like body. The sink sends none, so the fault is a
    plain dropped connection: botocore retries and the object commits."""
    sink = make_sink(endpoint=proxy.url, **SMALL)
    key = f"continue/{operation}.bin"
    data = payload(size, seed=26)

    def body_put(req):
        return req.method == "PUT" and req.path == f"/{bucket}/{key}" and \
            ("uploadId" in req.query) == (operation == "UploadPart")

    proxy.once(body_put, Fault(after_continue=True))
    stored = run_bounded(lambda: store(sink, key, data))
    assert len(proxy.applied) == 1
    assert stored.existed is False and stored.size == size
    puts = [r for r in proxy.seen("PUT") if r.path == f"/{bucket}/{key}"]
    assert puts and not [r for r in puts if r.expects_continue]
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_upload_part_reply_cut_is_retried_by_the_next_attempt(make_sink, s3, bucket, proxy):
    """UploadPart's reply cut in its headers (no ETag): a retryable SinkError naming the
    part, not a KeyError on a part thread; nothing is left behind."""
    sink = make_sink(endpoint=proxy.url, **SMALL)
    data = payload(11 * MiB, seed=27)
    proxy.rule = lambda req: Fault(close_after=40) if (
        req.method == "PUT" and "partNumber" in req.query) else None
    writer = sink.open_writer("cut/part.bin")
    with pytest.raises(RetryableSinkError) as exc:
        run_bounded(lambda: (write_all(writer, data), writer.commit(sha256_digests(data))))
    writer.abort()
    assert "cut/part.bin" in str(exc.value) and "UploadPart" in str(exc.value)
    proxy.rule = None
    assert store(sink, "cut/part.bin", data).existed is False
    assert uploads(s3, bucket) == []
