"""What the contract suite does not pin down: requests sent, checksums and their types,
bounded memory, and removing what aborted or crashed writers staged (Azurite)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from azure_proxy import Proxy
from azure_helpers import MiB, uncommitted

from archiver.errors import SinkError
from archiver.testing.sink_contract import payload, sha256_digests, store


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def settle(writer) -> None:
    """Wait until the writer's staged blocks have all reached the service."""
    with writer._cond:
        while writer.stats["in_flight"]:
            writer._cond.wait()


@pytest.fixture
def proxy(azurite):
    p = Proxy(azurite.port).start()
    yield p
    p.stop()


def proxied(make_sink, azurite, proxy, **options):
    return make_sink(account_url=proxy.account_url(azurite.account),
                     account_name=azurite.account, account_key=azurite.key, **options)


def test_requests_carry_checksums_and_never_overwrite(make_sink, azurite, proxy):
    sink = proxied(make_sink, azurite, proxy, block_size=256 << 10, max_blocks_in_flight=2)
    big, small = payload(MiB + 100, seed=1), payload(1000, seed=2)
    writer = sink.open_writer("a/big.bin", {"job-id": "job_1"})
    assert proxy.seen == [], "open_writer must send nothing (the pending token is recorded first)"
    writer.write(big)
    stored = writer.commit(sha256_digests(big))
    blocks = proxy.requests("PUT", "block")
    assert len(blocks) == 5
    for request in blocks:  # each block: its own MD5, verified by the service
        assert request.headers.get("content-md5"), request.headers
    [commit] = proxy.requests("PUT", "blocklist")
    assert commit.headers["if-none-match"] == "*"
    assert commit.headers["x-ms-blob-content-md5"] == md5_b64(big)
    assert commit.headers["x-ms-meta-sha256"] == hashlib.sha256(big).hexdigest()
    assert commit.headers["x-ms-meta-job_id"] == "job_1"
    assert stored.provider_checksum == {"algorithm": "MD5", "value": md5_b64(big),
                                        "type": "FULL_OBJECT", "verified_by": "client"}
    block = stored.extra["block_checksum"]
    assert block["type"] == "PER_BLOCK" and block["algorithm"] == "MD5"
    assert block["blocks"] == 5 and block["verified"] == "service"
    assert writer.stats["max_in_flight"] <= 2

    stored = store(sink, "a/small.bin", small)
    [put] = [r for r in proxy.requests("PUT", "") if r.path.endswith("small.bin")]
    assert put.headers["if-none-match"] == "*" and put.headers["x-ms-blob-type"] == "BlockBlob"
    assert put.headers["content-md5"] == md5_b64(small)
    assert stored.provider_checksum["verified_by"] == "service"
    assert "block_checksum" not in stored.extra
    assert sink.stat("a/small.bin").digests["sha256"] == hashlib.sha256(small).hexdigest()


def test_memory_is_bounded_by_the_declared_blocks(make_sink):
    sink = make_sink(block_size=64 << 10, max_blocks_in_flight=3)
    assert sink.memory_bound.startswith("0.25 MiB per open writer")  # 64 KiB × (1 + 3)
    writer = sink.open_writer("mem/obj.bin")
    data = payload(2 * MiB, seed=3)
    for i in range(0, len(data), 10000):
        writer.write(data[i:i + 10000])
        assert len(writer._buf) <= 64 << 10
        assert writer.stats["in_flight"] <= 3
    writer.commit(sha256_digests(data))
    assert writer.stats["blocks"] == 32


def test_nothing_visible_while_staging_and_abort_removes_staged_blocks(make_sink, service,
                                                                        container):
    sink = make_sink(block_size=64 << 10)
    writer = sink.open_writer("abort/obj.bin")
    writer.write(payload(300 << 10, seed=4))
    settle(writer)
    assert sink.stat("abort/obj.bin") is None
    assert uncommitted(service, container) == ["abort/obj.bin"]
    writer.abort()
    assert uncommitted(service, container) == []


def test_discard_of_a_crashed_writer_and_cleanup_never_touch_committed_blobs(
        make_sink, service, container):
    sink = make_sink(block_size=64 << 10)
    keep = payload(5000, seed=5)
    store(sink, "c/kept.bin", keep)
    # A crashed writer staged blocks beside the committed blob, another on a fresh name.
    beside, fresh = sink.open_writer("c/kept.bin"), sink.open_writer("c/lost.bin")
    for w in (beside, fresh):
        w.write(payload(200 << 10, seed=6))
        settle(w)
    tokens = [beside.pending, fresh.pending]
    sink._live.clear()  # as if that process had died
    later = make_sink(block_size=64 << 10)  # the next run
    for token in tokens:
        later.discard(token)
        later.discard(token)  # idempotent
    assert uncommitted(service, container) == []
    assert later.stat("c/kept.bin").size == 5000, "discard must never delete a committed blob"
    assert json.loads(tokens[1])["blob"] == "c/lost.bin"


def test_cleanup_removes_old_staged_blobs_only(make_sink, service, container):
    sink = make_sink(block_size=64 << 10)
    store(sink, "d/committed.bin", b"")  # an empty committed blob looks like a staged one
    crashed = sink.open_writer("d/crashed.bin")
    crashed.write(payload(100 << 10, seed=7))
    settle(crashed)
    live = sink.open_writer("d/live.bin")
    live.write(payload(100 << 10, seed=8))
    settle(live)
    sink._live.pop(crashed.nonce)
    assert sink.cleanup(older_than=3600) == []  # too recent
    removed = sink.cleanup(older_than=0)
    assert len(removed) == 1 and "d/crashed.bin" in removed[0] and "azure-test" in removed[0]
    assert uncommitted(service, container) == ["d/live.bin"]
    assert sink.stat("d/committed.bin").size == 0


def test_discard_refuses_tokens_of_other_containers(make_sink):
    sink = make_sink()
    token = json.dumps({"account": "evil.example", "container": "x", "blob": "b",
                        "writer": "n"})
    with pytest.raises(SinkError, match="not this sink's container"):
        sink.discard(token)
    with pytest.raises(SinkError, match="not a pending token"):
        sink.discard("garbage")


def test_list_keys_and_describe(make_sink):
    sink = make_sink(prefix="/root//")
    store(sink, "p/1.bin", b"1")
    store(sink, "p/2.bin", b"2")
    assert sorted(sink.list_keys("p/")) == ["p/1.bin", "p/2.bin"]
    assert sink.describe("p/1.bin").endswith("/root/p/1.bin")
    assert sink.describe("p/1.bin").startswith("azure://127.0.0.1:")
