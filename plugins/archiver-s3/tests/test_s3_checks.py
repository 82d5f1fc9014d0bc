"""Preflight, crash cleanup (discard, cleanup) and credentials, against a real moto server."""

from __future__ import annotations

import logging
import uuid

import pytest
from s3_testing import MiB, start_moto, uploads

from archiver.errors import ConflictError, SinkError
from archiver.testing.sink_contract import payload, sha256_digests, store

SMALL = dict(part_size=5 * MiB, multipart_threshold=5 * MiB)
WRITER = ["s3:ListBucket", "s3:HeadBucket", "s3:GetObject", "s3:PutObject",
          "s3:AbortMultipartUpload"]  # moto names HeadBucket's action s3:HeadBucket


def orphan(sink, key: str, size: int = 6 * MiB):
    """A writer left behind mid multipart upload, as by a killed process."""
    writer = sink.open_writer(key)
    writer.write(payload(size, seed=1))
    assert writer.upload_id
    return writer


# ---------------------------------------------------------------------- preflight
def test_preflight_passes_and_leaves_nothing(make_sink, s3, bucket):
    sink = make_sink(prefix="arch", tags={"a": "b"}, sse="AES256")
    sink.preflight()
    assert uploads(s3, bucket) == []
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_preflight_missing_bucket(make_sink, s3):
    sink = make_sink(label="vault", bucket="no-such-bucket-here")
    with pytest.raises(SinkError) as exc:
        sink.preflight()
    msg = str(exc.value)
    assert "'vault'" in msg and "'no-such-bucket-here'" in msg and "does not exist" in msg


def test_preflight_object_lock_needs_a_lock_bucket(make_sink, new_bucket):
    lock = {"mode": "COMPLIANCE", "retain_days": 1}
    plain = make_sink(label="vault", bucket=new_bucket(), object_lock=lock)
    with pytest.raises(SinkError) as exc:
        plain.preflight()
    assert "'vault'" in str(exc.value) and "Object Lock is not enabled" in str(exc.value)
    make_sink(bucket=new_bucket(lock=True), object_lock=lock).preflight()


def test_preflight_without_write_permission(make_sink, bucket, iam_keys, enforce_iam,
                                            monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "placeholder")
    keys = iam_keys(["s3:ListBucket", "s3:HeadBucket", "s3:GetObject"])  # read only
    for var, value in keys.items():
        monkeypatch.setenv(var, value)
    sink = make_sink(label="vault")
    with enforce_iam():
        with pytest.raises(SinkError) as exc:
            sink.preflight()
    msg = str(exc.value)
    assert "'vault'" in msg and bucket in msg and "not permitted" in msg
    assert "AccessDenied" in msg and "s3:PutObject" in msg


def test_preflight_with_write_permission(make_sink, s3, bucket, iam_keys, enforce_iam,
                                         monkeypatch):
    for var, value in iam_keys(WRITER).items():
        monkeypatch.setenv(var, value)
    sink = make_sink()
    with enforce_iam():
        sink.preflight()
        store(sink, "k.bin", b"allowed")
    assert uploads(s3, bucket) == []


@pytest.mark.parametrize("bad", ["unknown-key", "wrong-secret"])
def test_preflight_bad_credentials(make_sink, iam_keys, enforce_iam, monkeypatch, bad):
    keys = iam_keys(WRITER)
    if bad == "unknown-key":
        keys["AWS_ACCESS_KEY_ID"] = "AKIA" + "Z" * 16
    else:
        keys["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    for var, value in keys.items():
        monkeypatch.setenv(var, value)
    sink = make_sink(label="vault")
    with enforce_iam():
        with pytest.raises(SinkError) as exc:
            sink.preflight()
    msg = str(exc.value)
    assert "'vault'" in msg
    assert ("InvalidAccessKeyId" if bad == "unknown-key" else "SignatureDoesNotMatch") in msg
    assert "not-the-secret" not in msg


def test_unknown_profile_is_a_sink_error(make_sink):
    sink = make_sink(label="vault", profile="no-such-profile")
    with pytest.raises(SinkError, match="'vault'.*ProfileNotFound"):
        sink.preflight()


# ---------------------------------------------------------------------- discard / cleanup
def test_discard_aborts_an_orphan_from_another_process(make_sink, s3, bucket):
    crashed = make_sink(**SMALL)
    writer = orphan(crashed, "d/obj.bin")
    token = writer.pending
    assert writer.upload_id in token
    assert [u["UploadId"] for u in uploads(s3, bucket)] == [writer.upload_id]

    make_sink(**SMALL).discard(token)  # the next run, with a fresh sink
    assert uploads(s3, bucket) == []
    make_sink(**SMALL).discard(token)  # idempotent


def test_discard_of_an_early_token_aborts_only_that_key(make_sink, s3, bucket):
    crashed = make_sink(**SMALL)
    early = crashed.open_writer("d/a.bin")
    token = early.pending  # recorded before the upload existed: no UploadId in it
    assert "upload_id" not in token
    early.write(payload(6 * MiB, seed=2))
    other = orphan(crashed, "d/a.bin.other")

    make_sink(**SMALL).discard(token)
    assert [u["UploadId"] for u in uploads(s3, bucket)] == [other.upload_id]


def test_discard_refuses_foreign_tokens(make_sink):
    with pytest.raises(SinkError, match="refusing"):
        make_sink().discard("/tmp/some/.file.%%0123456789abcdef.partial")


def test_cleanup_aborts_orphans_under_the_prefix_only(make_sink, s3, bucket):
    gone = orphan(make_sink(prefix="arch", **SMALL), "p/j/data/one.bin")  # crashed run
    sink = make_sink(prefix="arch", **SMALL)  # this run
    outside = s3.create_multipart_upload(Bucket=bucket, Key="other-tool/file")["UploadId"]
    live = sink.open_writer("p/j/data/live.bin")
    live.write(payload(6 * MiB, seed=3))

    assert make_sink(prefix="arch").cleanup(older_than=10 ** 10) == []  # none that old
    removed = sink.cleanup(older_than=0)
    assert len(removed) == 1 and gone.upload_id in removed[0]
    assert f"s3://{bucket}/arch/p/j/data/one.bin" in removed[0]
    left = {u["UploadId"] for u in uploads(s3, bucket)}
    assert left == {outside, live.upload_id}  # other tools' and live writers' uploads stay
    live.abort()


def test_server_gone_mid_upload_then_next_run_discards(make_sink, s3, bucket):
    # A second server on its own port; moto's state is per process, so a third server
    # started later sees the same buckets and uploads ("S3 came back").
    server, url = start_moto()
    try:
        sink = make_sink(endpoint=url, **SMALL)
        writer = sink.open_writer("down/obj.bin")
        writer.write(payload(6 * MiB, seed=4))
        token = writer.pending
    finally:
        server.stop()
    with pytest.raises(SinkError) as exc:
        writer.write(payload(5 * MiB, seed=5))
        writer.commit(sha256_digests(b""))
    assert "down/obj.bin" in str(exc.value)
    with pytest.raises(SinkError, match="cleanup"):
        writer.abort()  # cannot reach S3 either: the pending token must stay recorded

    assert [u["Key"] for u in uploads(s3, bucket)] == ["down/obj.bin"]
    make_sink(**SMALL).discard(token)  # the next run recovers from the ledger's token
    assert uploads(s3, bucket) == [] and make_sink().stat("down/obj.bin") is None


# ---------------------------------------------------------------------- credentials
def test_credentials_never_in_logs_errors_or_reprs(make_sink, new_bucket, s3, caplog,
                                                   monkeypatch, iam_keys, enforce_iam):
    secret = "SeCrEt" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    caplog.set_level(logging.DEBUG)
    bucket = new_bucket()
    sink = make_sink(bucket=bucket, **SMALL)
    seen: list[str] = [repr(sink), repr(sink.config), str(sink.config.model_dump())]
    for key, data in (("s.bin", b"small"), ("l.bin", payload(6 * MiB, seed=6))):
        writer = sink.open_writer(key)
        writer.write(data)
        seen += [repr(writer), writer.pending, repr(writer.commit(sha256_digests(data)))]
    failures = [lambda: store(sink, "s.bin", b"different"),
                lambda: make_sink(bucket="missing-bucket-x").preflight(),
                lambda: sink.open_read("nope").__enter__()]
    for fail in failures:
        with pytest.raises((SinkError, ConflictError)) as exc:
            fail()
        seen += [str(exc.value), repr(exc.value), str(exc.value.__cause__)]
    keys = iam_keys(WRITER)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["AWS_ACCESS_KEY_ID"])  # real key, wrong secret
    with enforce_iam():
        with pytest.raises(SinkError) as exc:
            make_sink(bucket=bucket).preflight()
    seen += [str(exc.value), str(exc.value.__cause__)]

    assert any(r.name.startswith("botocore") for r in caplog.records), "no DEBUG logs seen"
    text = "\n".join(seen) + caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "SignatureDoesNotMatch" in text
    assert secret not in text


def test_boto3_client_uses_the_normal_credential_chain(make_sink, monkeypatch, bucket):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    sink = make_sink(label="vault")
    with pytest.raises(SinkError, match="'vault'.*no AWS credentials found"):
        sink.preflight()
