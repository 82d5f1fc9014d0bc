"""The gcs sink against a real fake-gcs-server (real HTTP on 127.0.0.1).

Where fake-gcs-server cannot show a behaviour (it verifies no client checksum, ignores
``ifGenerationMatch`` on resumable uploads, drops holds, enforces no retention), the
tests look at what the client sent through :class:`conftest.FaultProxy` and at what the
server stored; the README lists these gaps.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import traceback
from datetime import datetime, timedelta, timezone

import google_crc32c
import pytest
from archiver_gcs.config import GCSConfig
from archiver_gcs.preflight import check_object_retention
from pydantic import ValidationError

from archiver.errors import ConflictError, SinkError
from archiver.testing.sink_contract import payload, sha256_digests, store

KiB, MiB = 1 << 10, 1 << 20
CHUNK = 256 * KiB


def crc_b64(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def pieces(data: bytes, size: int = 100_000) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def get_blob(gcs_client, sink, key):
    return gcs_client.bucket(sink.config.bucket).get_blob(sink.object_name(key))


def put_foreign(gcs_client, sink, key, data, metadata=None):
    """An object stored behind the sink's back (another tool, or a cut-short commit)."""
    blob = gcs_client.bucket(sink.config.bucket).blob(sink.object_name(key))
    blob.metadata = metadata
    blob.upload_from_string(data)
    return blob


def uploads(proxy) -> list:
    return [s for s in proxy.requests("POST") if s.path.startswith("/upload/")]


# --------------------------------------------------------------------------- upload paths

@pytest.mark.parametrize("checksum", ["crc32c", "md5", "both"])
@pytest.mark.parametrize("size", [1000, 3 * MiB + 17], ids=["simple", "resumable"])
def test_checksums_recorded_and_equal_to_ours(make_sink, gcs_client, size, checksum):
    sink = make_sink(simple_upload_threshold=MiB, checksum=checksum)
    data = payload(size, seed=size)
    stored = store(sink, "job/data/a.bin", data, pieces(data))
    assert stored.provider_checksum["crc32c"] == crc_b64(data)
    assert stored.provider_checksum["md5"] == md5_b64(data)
    assert stored.extra["generation"] and stored.extra["checksum_encoding"] == "base64"
    blob = get_blob(gcs_client, sink, "job/data/a.bin")
    assert blob.crc32c == crc_b64(data) and blob.md5_hash == md5_b64(data)
    assert blob.metadata["sha256"] == hashlib.sha256(data).hexdigest()
    assert blob.download_as_bytes() == data


def test_simple_and_resumable_chosen_by_size(make_sink, fault_proxy):
    sink = make_sink(simple_upload_threshold=MiB, checksum="both")
    small, large = payload(MiB, seed=1), payload(3 * MiB + 5, seed=2)

    w = sink.open_writer("s.bin")
    for p in pieces(small):
        w.write(p)
    assert " " not in w.pending, "no resumable session for an object at the threshold"
    w.commit(sha256_digests(small))
    (simple,) = uploads(fault_proxy)
    assert simple.query["uploadType"] == ["multipart"] and simple.query["ifGenerationMatch"] == ["0"]
    assert crc_b64(small).encode() in simple.body and md5_b64(small).encode() in simple.body

    fault_proxy.seen.clear()
    w = sink.open_writer("l.bin")
    for p in pieces(large):
        w.write(p)
    assert w.pending.startswith("gcs-writer/") and "upload_id=" in w.pending
    w.commit(sha256_digests(large))
    (init,) = uploads(fault_proxy)
    assert init.query["uploadType"] == ["resumable"] and init.query["ifGenerationMatch"] == ["0"]
    puts = [s for s in fault_proxy.seen if s.is_session_put]
    for put in puts[:-1]:  # full 256 KiB chunks of unknown total, no hash yet
        assert put.content_range.endswith("/*") and len(put.body) == CHUNK
        assert "x-goog-hash" not in put.headers
    final = puts[-1]
    assert final.content_range.endswith(f"/{len(large)}")
    assert final.headers["x-goog-hash"] == f"crc32c={crc_b64(large)},md5={md5_b64(large)}"
    assert b"".join(p.body for p in puts) == large


def test_writer_memory_stays_bounded(make_sink):
    sink = make_sink(simple_upload_threshold=512 * KiB)
    data = payload(4 * MiB + 3, seed=3)
    w = sink.open_writer("bounded.bin")
    write_size = 100_000
    for p in pieces(data, write_size):
        w.write(p)
        assert len(w._buf) <= max(512 * KiB, CHUNK) + write_size
    w.commit(sha256_digests(data))


def test_metadata_merged_and_sha256_ours(make_sink, gcs_client):
    sink = make_sink(metadata={"team": "records"})
    data = b"x" * 10
    store(sink, "m.bin", data, metadata={"job-id": "j-1", "sha256": "forged"})
    blob = get_blob(gcs_client, sink, "m.bin")
    assert blob.metadata == {"team": "records", "job-id": "j-1",
                             "sha256": hashlib.sha256(data).hexdigest()}
    assert sink.stat("m.bin").digests == {"sha256": hashlib.sha256(data).hexdigest()}


# --------------------------------------------------------------------------- no overwrite

@pytest.mark.parametrize("size", [5000, 2 * MiB + 1], ids=["simple", "resumable"])
def test_identical_rerun_and_conflict(make_sink, gcs_client, size):
    sink = make_sink(simple_upload_threshold=MiB)
    data, other = payload(size, seed=4), payload(size, seed=5)
    first = store(sink, "k.bin", data, pieces(data))
    gen = get_blob(gcs_client, sink, "k.bin").generation
    again = store(sink, "k.bin", data, pieces(data, 77_777))
    assert again.existed is True and again.digests["sha256"] == first.digests["sha256"]
    with pytest.raises(ConflictError) as exc:
        store(sink, "k.bin", other, pieces(other))
    assert "'k.bin'" in str(exc.value) and "gcs-test" in str(exc.value)
    assert hashlib.sha256(other).hexdigest() in str(exc.value)
    blob = get_blob(gcs_client, sink, "k.bin")
    assert blob.generation == gen and blob.download_as_bytes() == data


def test_existing_key_refused_when_session_starts(make_sink, gcs_client, fault_proxy):
    """Real GCS answers 412 already when the session starts; the rest is only hashed."""
    sink = make_sink(simple_upload_threshold=0)
    data = payload(CHUNK * 3, seed=6)
    put_foreign(gcs_client, sink, "taken.bin", data)
    fault_proxy.rule = lambda s: 412 if s.query.get("uploadType") == ["resumable"] else None
    stored = store(sink, "taken.bin", data, pieces(data))
    assert stored.existed is True
    assert not [s for s in fault_proxy.seen if s.is_session_put], "no bytes after the 412"
    assert get_blob(gcs_client, sink, "taken.bin").metadata["sha256"] == stored.digests["sha256"]


def test_writer_racing_at_finalisation(make_sink, gcs_client, fault_proxy):
    """Another writer creates the key after our look but before our final request: real
    GCS answers 412 to the final request (played by the proxy), and nothing is replaced."""
    sink = make_sink(simple_upload_threshold=0)
    ours, theirs = payload(CHUNK + 10, seed=7), payload(CHUNK + 10, seed=8)

    def race(seen):
        if seen.is_session_put and "x-goog-hash" in seen.headers:
            put_foreign(gcs_client, sink, "race.bin", theirs,
                        {"sha256": hashlib.sha256(theirs).hexdigest()})
            return 412
        return None

    fault_proxy.rule = race
    with pytest.raises(ConflictError):
        store(sink, "race.bin", ours, pieces(ours))
    assert get_blob(gcs_client, sink, "race.bin").download_as_bytes() == theirs


def test_interrupted_commit_is_completed(make_sink, gcs_client):
    """Bytes stored but sha256/retention never recorded (a crash between the two)."""
    sink = make_sink(retention={"mode": "Unlocked", "retain_days": 2})
    data = payload(3000, seed=9)
    put_foreign(gcs_client, sink, "cut.bin", data, {"job-id": "j"})
    assert sink.stat("cut.bin").digests == {}, "no sha256 yet: stat must not vouch for it"
    stored = store(sink, "cut.bin", data)
    assert stored.existed is True and stored.extra["retention"]["mode"] == "Unlocked"
    blob = get_blob(gcs_client, sink, "cut.bin")
    assert blob.metadata == {"job-id": "j", "sha256": hashlib.sha256(data).hexdigest()}
    assert blob.retention.mode == "Unlocked"

    put_foreign(gcs_client, sink, "cut2.bin", data)
    with pytest.raises(ConflictError):
        store(sink, "cut2.bin", payload(3000, seed=10))
    blob = get_blob(gcs_client, sink, "cut2.bin")
    assert blob.metadata is None and blob.retention.mode is None, "left untouched"


# --------------------------------------------------------------------------- failures

def test_abort_mid_resumable_cancels_the_session(make_sink, gcs_client, fault_proxy):
    sink = make_sink(simple_upload_threshold=0)
    w = sink.open_writer("half.bin")
    w.write(payload(2 * CHUNK + 5, seed=11))
    token = w.pending
    assert [s for s in fault_proxy.seen if s.is_session_put], "two chunks went out"
    w.abort()
    w.abort()
    (delete,) = fault_proxy.requests("DELETE")
    assert delete.query["upload_id"][0] in token
    assert sink.stat("half.bin") is None and get_blob(gcs_client, sink, "half.bin") is None
    with pytest.raises(SinkError):
        w.commit(sha256_digests(b""))


def test_server_failure_mid_upload_then_next_run_completes(make_sink, gcs_client, fault_proxy):
    sink = make_sink(simple_upload_threshold=0)
    data = payload(5 * CHUNK + 3, seed=12)
    sent = []

    def fail_after_two_chunks(seen):
        if seen.is_session_put:
            sent.append(seen)
            return 503 if len(sent) > 2 else None
        return None

    fault_proxy.rule = fail_after_two_chunks
    w = sink.open_writer("flaky.bin")
    with pytest.raises(SinkError, match="upload failed after .* attempts") as exc:
        for p in pieces(data):
            w.write(p)
    assert "upload_id" not in str(exc.value) or "<redacted>" in str(exc.value)
    w.abort()
    assert fault_proxy.requests("DELETE"), "the session was cancelled"
    assert get_blob(gcs_client, sink, "flaky.bin") is None, "nothing partial is visible"

    fault_proxy.rule = None  # the next run
    stored = store(sink, "flaky.bin", data, pieces(data))
    assert stored.existed is False
    assert get_blob(gcs_client, sink, "flaky.bin").download_as_bytes() == data


def test_dropped_connection_mid_upload(make_sink, gcs_client, fault_proxy):
    sink = make_sink(simple_upload_threshold=0)
    fault_proxy.rule = lambda s: "drop" if s.is_session_put else None
    w = sink.open_writer("dropped.bin")
    with pytest.raises(SinkError):
        w.write(payload(CHUNK, seed=13))
    w.abort()
    assert get_blob(gcs_client, sink, "dropped.bin") is None


@pytest.mark.parametrize("size", [4000, 2 * CHUNK + 9000], ids=["simple", "resumable"])
def test_bytes_corrupted_in_flight_are_deleted(make_sink, gcs_client, fault_proxy, size):
    """Real GCS rejects a body that does not match the sent crc32c; fake-gcs-server does
    not, so the sink's own check after the upload must catch it and delete the object."""
    sink = make_sink(simple_upload_threshold=CHUNK, temporary_hold=True)
    data = payload(size, seed=14)
    tail = data[-1000:]
    corrupted = []

    def corrupt(seen):
        if seen.method in ("POST", "PUT") and tail in seen.body:
            corrupted.append(seen)
            return seen.body.replace(tail, bytes(1000))
        return None

    fault_proxy.rule = corrupt
    with pytest.raises(SinkError, match="other bytes than were sent.*deleted"):
        store(sink, "bad.bin", data, pieces(data))
    (hit,) = corrupted
    assert hit.is_session_put == (size > CHUNK), "the path under test was taken"
    assert get_blob(gcs_client, sink, "bad.bin") is None
    assert not fault_proxy.requests("PATCH"), "no hold before the bytes were verified"


def test_discard_cancels_a_crashed_writers_session(make_sink, gcs_client, fault_proxy):
    sink = make_sink(simple_upload_threshold=0)
    w = sink.open_writer("crashed.bin")
    w.write(payload(CHUNK + 1, seed=15))
    token = w.pending
    next_run = make_sink(simple_upload_threshold=0)  # a new process reads the ledger
    next_run.discard(token)
    (delete,) = fault_proxy.requests("DELETE")
    assert delete.query["upload_id"][0] in token
    next_run.discard(token)  # idempotent: a gone session counts as cancelled
    assert get_blob(gcs_client, sink, "crashed.bin") is None


def test_discard_refuses_foreign_urls(make_sink, fault_proxy):
    sink = make_sink()
    for url in ("http://attacker.example/upload/storage/v1/b/x/o?upload_id=1",
                f"{fault_proxy.url}/upload/storage/v1/b/other-bucket/o?upload_id=1"):
        with pytest.raises(SinkError, match="refusing"):
            sink.discard(f"gcs-writer/abc {url}")
    with pytest.raises(SinkError, match="not a pending token"):
        sink.discard("s3-upload/xyz")
    assert not fault_proxy.requests("DELETE")


# --------------------------------------------------------------------------- compliance

def test_retention_holds_storage_class_kms(make_sink, gcs_client, fault_proxy):
    fault_proxy.keep_holds = True  # fake-gcs-server drops holds; the proxy keeps them
    kms = "projects/p/locations/eu/keyRings/r/cryptoKeys/k"
    sink = make_sink(simple_upload_threshold=MiB, storage_class="nearline", kms_key_name=kms,
                     temporary_hold=True, event_based_hold=True,
                     retention={"mode": "Locked", "retain_days": 30})
    before = datetime.now(timezone.utc)
    for key, size in (("c-small.bin", 1000), ("c-large.bin", 2 * MiB)):
        fault_proxy.seen.clear()
        data = payload(size, seed=size)
        stored = store(sink, key, data, pieces(data))
        until = datetime.fromisoformat(stored.extra["retention"]["retain_until"]
                                       .replace("Z", "+00:00"))
        assert stored.extra["retention"]["mode"] == "Locked"
        assert stored.extra["temporary_hold"] is True  # read back (kept by the proxy)
        assert stored.extra["event_based_hold"] is True
        assert timedelta(days=30) - timedelta(minutes=5) < until - before < timedelta(days=31)
        blob = get_blob(gcs_client, sink, key)  # what the emulator stored
        assert blob.retention.mode == "Locked"
        assert blob.metadata["sha256"] == hashlib.sha256(data).hexdigest()
        # What the client sent: the emulator keeps no holds, ignores the KMS key and the
        # storage class of a resumable upload.
        (upload,) = uploads(fault_proxy)
        assert upload.query["kmsKeyName"] == [kms]
        assert b'"storageClass": "NEARLINE"' in upload.body
        if upload.query["uploadType"] == ["multipart"]:
            assert blob.storage_class == "NEARLINE"
        assert b"retention" not in upload.body and b"sha256" not in upload.body
        (patch,) = fault_proxy.requests("PATCH")  # read back: in force, no second PATCH
        assert fault_proxy.seen.index(patch) > fault_proxy.seen.index(upload)
        sent = json.loads(patch.body)
        assert sent["temporaryHold"] is True and sent["eventBasedHold"] is True
        assert sent["retention"]["mode"] == "Locked"
        assert sent["metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert patch.query["ifGenerationMatch"] == [str(blob.generation)]


def test_retention_config_validation():
    base = {"bucket": "b-ok"}
    with pytest.raises(ValidationError, match="exactly one"):
        GCSConfig(**base, retention={"mode": "Locked", "retain_days": 1,
                                     "retain_until": "2999-01-01"})
    with pytest.raises(ValidationError, match="not in the future"):
        GCSConfig(**base, retention={"mode": "Locked", "retain_until": "2001-01-01"})
    with pytest.raises(ValidationError):
        GCSConfig(**base, retention={"mode": "Governance", "retain_days": 1})
    cfg = GCSConfig(**base, retention={"mode": "Unlocked", "retain_until": "2999-01-02"})
    assert cfg.retention.until().isoformat() == "2999-01-02T00:00:00+00:00"


@pytest.mark.parametrize("bad, match", [
    ({"chunk_size": 100 * KiB}, "multiple of 256 KiB"),
    ({"simple_upload_threshold": 9 * MiB}, "between 0 and"),
    ({"bucket": "gs://x"}, "without 'gs://'"),
    ({"bucket": "Bad_Bucket"}, "not a valid GCS bucket"),
    ({"metadata": {"SHA256": "x"}}, "written by the sink"),
    ({"storage_class": "cold"}, "unknown storage class"),
    ({"kms_key_name": "my-key"}, "kms_key_name"),
    ({"checksum": "sha1"}, "checksum"),
    ({"region": "eu"}, "Extra inputs"),
])
def test_config_errors(bad, match):
    with pytest.raises(ValidationError, match=match):
        GCSConfig(**{"bucket": "b-ok", **bad})


# --------------------------------------------------------------------------- preflight

def test_preflight_ok_leaves_nothing(make_sink, gcs_client, caplog):
    sink = make_sink(retention={"mode": "Locked", "retain_days": 1})
    with caplog.at_level(logging.WARNING):
        sink.preflight()
    assert "does not report object retention" in caplog.text
    left = list(gcs_client.list_blobs(sink.config.bucket, prefix=sink.config.prefix))
    assert left == [], f"the probe object was not removed: {left}"


def test_preflight_missing_bucket(make_sink):
    sink = make_sink(label="vault", bucket="no-such-bucket-here")
    with pytest.raises(SinkError, match=r"sink vault: bucket 'no-such-bucket-here' does not "):
        sink.preflight()


def test_preflight_without_write_permission(make_sink, fault_proxy):
    sink = make_sink(label="vault")
    fault_proxy.rule = lambda s: 403 if s.path.startswith("/upload/") else None
    with pytest.raises(SinkError, match="sink vault: no permission to create objects"):
        sink.preflight()


def test_object_retention_must_be_enabled(gcs_client, bucket_name):
    bucket = gcs_client.get_bucket(bucket_name)
    with pytest.raises(SinkError, match="does not have object retention enabled"):
        check_object_retention(dict(bucket._properties), "vault", bucket_name, emulated=False)
    enabled = {**bucket._properties, "objectRetention": {"mode": "Enabled"}}
    check_object_retention(enabled, "vault", bucket_name, emulated=False)


# --------------------------------------------------------------------------- keys

def test_prefix_normalisation(make_sink, gcs_client, bucket_name):
    a, b = make_sink(prefix="archive"), make_sink(prefix="/archive//")
    c = make_sink(prefix="archive/")
    store(a, "p/j/data/x.bin", b"one")
    assert b.stat("p/j/data/x.bin").size == 3 and c.stat("p/j/data/x.bin").size == 3
    assert a.describe("p/j/data/x.bin") == f"gs://{bucket_name}/archive/p/j/data/x.bin"
    assert gcs_client.bucket(bucket_name).get_blob("archive/p/j/data/x.bin") is not None
    gcs_client.bucket(bucket_name).blob("archive/p/j/data/x.bin").delete()


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/./b", "", "a\nb"])
def test_unsafe_keys_refused(make_sink, key):
    with pytest.raises(SinkError, match="refusing key"):
        make_sink().open_writer(key)


# --------------------------------------------------------------------------- credentials

MARKER = "SECRET-MARKER-7f3a9c"


def _service_account_file(tmp_path, private_key: str):
    info = {"type": "service_account", "project_id": "p", "private_key_id": MARKER + "-id",
            "private_key": private_key, "client_email": "archiver@p.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    return path


def test_credentials_never_in_errors_or_logs(make_sink, tmp_path, caplog):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    secret_line = pem.splitlines()[5]
    sink = make_sink(label="vault", credentials_file=_service_account_file(tmp_path, pem))
    texts = [repr(sink.config), str(sink.config), repr(sink)]
    with caplog.at_level(logging.DEBUG):
        store(sink, "c.bin", b"abc")
        with pytest.raises(ConflictError) as conflict:
            store(sink, "c.bin", b"abd")
        bad = make_sink(label="vault", bucket="no-such-bucket-creds",
                        credentials_file=sink.config.credentials_file)
        with pytest.raises(SinkError) as missing:
            bad.preflight()
    texts += [str(conflict.value), str(missing.value), caplog.text]
    for text in texts:
        assert MARKER not in text and secret_line not in text


def test_broken_credentials_file_reported_without_content(make_sink, tmp_path):
    sink = make_sink(label="vault", credentials_file=_service_account_file(tmp_path, MARKER))
    with pytest.raises(SinkError, match="sink vault: credentials_file .*sa.json.* could not be "
                                        "loaded") as exc:
        sink.stat("x.bin")
    rendered = "".join(traceback.format_exception(exc.value))
    assert MARKER not in rendered
    missing = make_sink(label="vault", credentials_file=tmp_path / "absent.json")
    with pytest.raises(SinkError, match="does not exist"):
        missing.preflight()


# --------------------------------------------------------------------------- plugin

def test_entry_point_registers_gcs(monkeypatch):
    from archiver_gcs.sink import GCSSink

    from archiver.plugins import build_plugin_manager

    monkeypatch.setenv("ARCHIVER_PLUGINS", "gcs")  # this distribution's entry point alone
    monkeypatch.delenv("ARCHIVER_DISABLE_PLUGINS", raising=False)
    plugins = build_plugin_manager(entry_points=True)
    assert plugins.registry.get("sink", "gcs") is GCSSink
    info = plugins.infos["gcs"]
    assert info.builtin is False and info.module == "archiver_gcs.plugin"
    assert "sink:gcs" in info.components and info.version == "0.1.0"
