"""Bad input, each against a real Azurite: clear errors naming the sink (and, for refused
requests, the permission), nothing visible, and a writer that can be aborted."""

from __future__ import annotations

import base64
import logging
import time
from datetime import datetime, timedelta, timezone

import pytest
from azure_helpers import MiB, uncommitted

from archiver.errors import ConflictError, SinkError
from archiver.testing.sink_contract import payload, sha256_digests, store
from archiver_azure.client import RetryableSinkError
from archiver_azure.testing import azurite_server

WRONG_KEY = base64.b64encode(b"not-the-account-key-" * 3).decode()


def sas(service, container: str, permission: str) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas
    return generate_container_sas(
        service.account_name, container, account_key=service.credential.account_key,
        permission=ContainerSasPermissions.from_string(permission),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1))


def test_wrong_account_key(make_sink, azurite, service, container):
    sink = make_sink(label="az-wrong", account_name=azurite.account, account_key=WRONG_KEY)
    with pytest.raises(SinkError) as exc:
        sink.preflight()
    text = str(exc.value)
    assert "az-wrong" in text and "credentials were refused" in text and "HTTP 403" in text
    assert WRONG_KEY not in text
    writer = sink.open_writer("k/obj.bin")
    writer.write(b"data")
    with pytest.raises(SinkError, match="az-wrong"):
        writer.commit(sha256_digests(b"data"))
    writer.abort()
    assert list(service.get_container_client(container).list_blob_names()) == []


def test_missing_container(make_sink):
    sink = make_sink(label="az-missing", container="no-such-container")
    with pytest.raises(SinkError) as exc:
        sink.preflight()
    assert "az-missing" in str(exc.value) and "container does not exist" in str(exc.value)
    with pytest.raises(SinkError, match="az-missing.*ContainerNotFound"):
        store(sink, "k/obj.bin", b"data")


def test_sas_without_write_permission(make_sink, azurite, service, container):
    token = sas(service, container, "rl")
    sink = make_sink(label="az-ro", sas_token=token)
    with pytest.raises(SinkError) as exc:
        sink.preflight()
    text = str(exc.value)
    assert "az-ro" in text and "writing is not permitted" in text and "'w'" in text
    assert token not in text and "sig=" not in text.replace("sig=[secret]", "")
    with pytest.raises(SinkError, match="az-ro.*needs write"):
        store(sink, "k/obj.bin", payload(3 * MiB), metadata=None)
    assert uncommitted(service, container) == []
    # The same container with a SAS that may write (and delete its staged blocks).
    good = make_sink(label="az-rw", sas_token="?" + sas(service, container, "racwdl"))
    good.preflight()
    assert store(good, "k/obj.bin", b"data").size == 4


def test_sas_without_delete_still_archives(make_sink, service, container, caplog):
    sink = make_sink(label="az-nodelete", sas_token=sas(service, container, "rcwl"),
                     block_size=64 << 10)
    with caplog.at_level(logging.WARNING, logger="archiver_azure"):
        sink.preflight()
    assert "cannot delete" in caplog.text and "expire" in caplog.text
    writer = sink.open_writer("nd/obj.bin")
    writer.write(payload(200 << 10))
    writer.abort()  # staged blocks cannot be removed: invisible, they expire; no raise
    assert sink.stat("nd/obj.bin") is None


def test_existing_blob_with_different_bytes(make_sink, service, container):
    service.get_container_client(container).upload_blob("x/taken.bin", b"someone else's")
    sink = make_sink(label="az-clash", block_size=64 << 10)
    for size in (10, 300 << 10):  # Put Blob and Put Block List
        writer = sink.open_writer("x/taken.bin")
        writer.write(payload(size))
        with pytest.raises(ConflictError) as exc:
            writer.commit(sha256_digests(payload(size)))
        writer.abort()
        assert "az-clash" in str(exc.value) and "x/taken.bin" in str(exc.value)
    blob = service.get_container_client(container).get_blob_client("x/taken.bin")
    assert blob.download_blob().readall() == b"someone else's"
    # Same bytes written by someone else (no sha256 metadata): hashed, existed=True.
    assert store(sink, "x/taken.bin", b"someone else's").existed is True


@pytest.mark.parametrize("key", ["/".join(["s"] * 260), "n" * 1100])
def test_blob_name_over_azure_limits(make_sink, key):
    sink = make_sink(label="az-long")
    with pytest.raises(SinkError) as exc:
        sink.open_writer(key)
    assert "az-long" in str(exc.value) and "over Azure's limits" in str(exc.value)


def test_azurite_stopped_mid_upload(make_sink):
    with azurite_server() as own:
        from azure.storage.blob import BlobServiceClient
        plain = BlobServiceClient.from_connection_string(own.connection_string())
        plain.create_container("outage")
        sink = make_sink(label="az-outage", container="outage",
                         connection_string=own.connection_string(), block_size=64 << 10,
                         timeout=3)
        writer = sink.open_writer("o/obj.bin")
        writer.write(payload(200 << 10, seed=1))  # some blocks reach the service
        token = writer.pending
        # Azurite writes its metadata every 5 s and, with clients connected, does not exit
        # on SIGINT: wait for that save, then kill it (a crash, as far as clients see).
        time.sleep(5.5)
        own.stop(grace=0.2)
        with pytest.raises(RetryableSinkError) as exc:
            writer.write(payload(MiB, seed=2))
            writer.commit(sha256_digests(b""))
        assert "az-outage" in str(exc.value)
        with pytest.raises(RetryableSinkError, match="az-outage"):
            writer.abort()  # cannot reach the service: the core keeps the token
        own.start()
        assert sink.stat("o/obj.bin") is None, "nothing may be visible after the outage"
        sink.discard(token)  # what the next run does with the kept token
        assert uncommitted(plain, "outage") == []
        data = payload(300 << 10, seed=3)
        assert store(sink, "o/obj.bin", data).size == len(data)
        plain.close()
