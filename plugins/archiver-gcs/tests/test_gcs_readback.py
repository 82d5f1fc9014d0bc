"""Nothing unproven: after the commit the object is read back (GET) and must hold the
configured retention and holds; what is missing is patched again and read back again,
and a reply cut short is a retryable sink error (never a KeyError).

fake-gcs-server stores object retention (and refuses to change a Locked one) but drops
holds: the holds tests run through ``conftest.FaultProxy`` with ``keep_holds`` (it keeps
what was PATCHed) or without it (the emulator's own behaviour: a store that drops
holds, which must fail the commit).
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timedelta, timezone

import pytest

from archiver.errors import SinkError
from archiver.testing.faultproxy import Fault, FaultProxy
from archiver.testing.sink_contract import payload, sha256_digests, store
from archiver_gcs.client import RetryableSinkError

UNLOCKED = {"mode": "Unlocked", "retain_days": 5}


def get_blob(gcs_client, sink, key):
    return gcs_client.bucket(sink.config.bucket).get_blob(sink.object_name(key))


def strip(field: str):
    """A FaultProxy rule: PATCH requests reach the emulator without ``field``."""
    def rule(seen):
        if seen.method == "PATCH" and seen.body:
            sent = json.loads(seen.body)
            if field in sent:
                sent.pop(field)
                return json.dumps(sent).encode()
        return None
    return rule


def bounded(fn, seconds: float = 20.0):
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


def until_of(stored) -> datetime:
    return datetime.fromisoformat(stored.extra["retention"]["retain_until"]
                                  .replace("Z", "+00:00"))


@pytest.mark.parametrize("threshold", [1 << 20, 0], ids=["simple", "resumable"])
def test_retention_dropped_once_is_patched_again_and_read_back(make_sink, gcs_client,
                                                               fault_proxy, threshold):
    sink = make_sink(simple_upload_threshold=threshold, retention=UNLOCKED)
    dropped = []

    def once(seen):
        if not dropped:
            body = strip("retention")(seen)
            if body is not None:
                dropped.append(seen)
                return body
        return None

    fault_proxy.rule = once
    before = datetime.now(timezone.utc).replace(microsecond=0)
    data = payload(300_000, seed=41)
    stored = store(sink, "again.bin", data)
    assert dropped and len(fault_proxy.requests("PATCH")) == 2
    assert stored.extra["retention"]["mode"] == "Unlocked"
    assert before + timedelta(days=5) <= until_of(stored) <= \
        datetime.now(timezone.utc) + timedelta(days=5)
    assert get_blob(gcs_client, sink, "again.bin").retention.mode == "Unlocked"
    assert sink.retention_in_force("again.bin") == {
        "mode": "Unlocked", "retain_until": stored.extra["retention"]["retain_until"]}


def test_retention_refused_fails_the_commit_then_next_attempt_applies_it(
        make_sink, gcs_client, fault_proxy):
    sink = make_sink(retention=UNLOCKED)
    fault_proxy.rule = strip("retention")
    data = payload(5000, seed=42)
    with pytest.raises(SinkError) as exc:
        store(sink, "refused.bin", data)
    message = str(exc.value)
    assert "gcs-test" in message and "refused.bin" in message
    assert "wanted retention Unlocked until" in message
    assert "GCS holds no retention and no holds" in message
    assert "not counted as archived" in message
    blob = get_blob(gcs_client, sink, "refused.bin")
    assert blob.retention.mode is None and blob.metadata["sha256"]

    fault_proxy.rule = None  # the next attempt: the key is taken, same bytes, applied now
    again = store(sink, "refused.bin", data)
    assert again.existed is True and again.extra["retention"]["mode"] == "Unlocked"
    assert get_blob(gcs_client, sink, "refused.bin").retention.mode == "Unlocked"


def test_holds_the_store_drops_fail_the_commit(make_sink, gcs_client, fault_proxy):
    """fake-gcs-server drops holds, as a store that ignores them would: read back, they
    are missing, so the copy is not counted; with the holds kept it is."""
    sink = make_sink(temporary_hold=True, event_based_hold=True)
    data = payload(4000, seed=43)
    with pytest.raises(SinkError) as exc:
        store(sink, "holds.bin", data)
    message = str(exc.value)
    assert "holds.bin" in message and "wanted temporary hold, event-based hold" in message
    assert "GCS holds no retention and no holds" in message
    assert len(fault_proxy.requests("PATCH")) == 2  # applied, read back, applied again

    fault_proxy.keep_holds = True
    again = store(sink, "holds.bin", data)
    assert again.existed is True
    assert again.extra["temporary_hold"] is True and again.extra["event_based_hold"] is True
    assert sink.retention_in_force("holds.bin") == {"temporary_hold": True,
                                                    "event_based_hold": True}


def test_existing_object_with_shorter_retention_is_extended(make_sink, gcs_client):
    data = payload(2000, seed=44)
    sink = make_sink(retention={"mode": "Unlocked", "retain_days": 30})
    blob = gcs_client.bucket(sink.config.bucket).blob(sink.object_name("short.bin"))
    blob.metadata = {"sha256": hashlib.sha256(data).hexdigest()}
    blob.upload_from_string(data)
    blob.retention.mode = "Unlocked"
    blob.retention.retain_until_time = datetime.now(timezone.utc) + timedelta(days=1)
    blob.patch()
    stored = store(sink, "short.bin", data)
    assert stored.existed is True
    assert until_of(stored) > datetime.now(timezone.utc) + timedelta(days=29)


def test_shortened_retention_is_what_retention_in_force_reports(make_sink, gcs_client):
    """What ``archiver verify`` compares: the retention as GCS holds it now."""
    sink = make_sink(retention=UNLOCKED)
    stored = store(sink, "later.bin", b"later")
    blob = get_blob(gcs_client, sink, "later.bin")
    shorter = (until_of(stored) - timedelta(days=3)).replace(microsecond=0)
    blob.retention.retain_until_time = shorter
    blob.patch(override_unlocked_retention=True)
    now = sink.retention_in_force("later.bin")
    assert now["mode"] == "Unlocked"
    assert datetime.fromisoformat(now["retain_until"].replace("Z", "+00:00")) == shorter


# --------------------------------------------------------------------------- transport faults
@pytest.fixture
def tcp_proxy(gcs_server, monkeypatch):
    """archiver.testing.faultproxy in front of the emulator; sinks built meanwhile use it
    (simple uploads only: resumable session URLs name the emulator itself)."""
    with FaultProxy(gcs_server, timeout=10) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        yield proxy


def test_read_back_cut_inside_its_headers_then_next_attempt_commits(make_sink, gcs_client,
                                                                    tcp_proxy):
    sink = make_sink(retention=UNLOCKED)
    data = payload(3000, seed=45)
    name = sink.object_name("cut.bin").replace("/", "%2F")
    tcp_proxy.once(lambda r: r.method == "GET" and r.path.endswith(f"/o/{name}"),
                   Fault(close_after=30))
    with pytest.raises(SinkError) as exc:
        bounded(lambda: store(sink, "cut.bin", data))
    assert "gcs-test" in str(exc.value) and "cut.bin" in str(exc.value)
    assert len(tcp_proxy.applied) == 1
    again = bounded(lambda: store(sink, "cut.bin", data))
    assert again.existed is True and again.extra["retention"]["mode"] == "Unlocked"
    assert get_blob(gcs_client, sink, "cut.bin").download_as_bytes() == data


def test_upload_reply_without_generation_is_retryable(make_sink, gcs_client, tcp_proxy):
    """A 200 whose object resource lacks generation and size (here answered by the proxy,
    so nothing is stored): before, the size check tried to delete ``props["generation"]``
    and raised KeyError; now it is a retryable sink error and the next attempt stores."""
    sink = make_sink()
    body = json.dumps({"kind": "storage#object", "bucket": sink.config.bucket,
                       "name": sink.object_name("nogen.bin")}).encode()
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
             + str(len(body)).encode() + b"\r\n\r\n" + body)
    tcp_proxy.once(lambda r: r.method == "POST" and r.path.startswith("/upload/"),
                   Fault(respond=reply))
    data = payload(2000, seed=46)
    with pytest.raises(RetryableSinkError) as exc:
        bounded(lambda: store(sink, "nogen.bin", data))
    assert "nogen.bin" in str(exc.value) and "generation" in str(exc.value)
    assert get_blob(gcs_client, sink, "nogen.bin") is None
    stored = bounded(lambda: store(sink, "nogen.bin", data))
    assert stored.existed is False and stored.digests == sha256_digests(data)
