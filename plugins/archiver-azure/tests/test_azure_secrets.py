"""No secret (account key, SAS signature, connection string) in logs, errors or reprs.

Each auth mode gets a unique, wrong secret; every request fails against Azurite, and
every log record (the SDK's HTTP logging included, at DEBUG), error message and repr
is searched for it.
"""

from __future__ import annotations

import base64
import logging
import uuid

import pytest

from archiver.errors import SinkError
from archiver.testing.sink_contract import payload, sha256_digests


def unique_key() -> str:
    return base64.b64encode(uuid.uuid4().bytes * 4).decode()


@pytest.mark.parametrize("auth", ["connection_string", "account_key", "sas_token"])
def test_secrets_never_leak(make_sink, azurite, caplog, auth):
    key = unique_key()
    sig = uuid.uuid4().hex
    options = {
        "connection_string": {"connection_string": azurite.connection_string(key)},
        "account_key": {"account_name": azurite.account, "account_key": key},
        "sas_token": {"sas_token": f"sv=2022-11-02&sp=rw&sr=c&se=2099-01-01&sig={sig}"},
    }[auth]
    needles = [key, sig, key[:20]]
    sink = make_sink(label="az-secret", block_size=64 << 10, **options)
    texts = [repr(sink), repr(sink.config), str(sink.config), sink.describe("k")]
    with caplog.at_level(logging.DEBUG):
        for action in (sink.preflight, lambda: sink.stat("k/x"),
                       lambda: list(sink.list_keys(""))):
            with pytest.raises(SinkError) as exc:
                action()
            texts.append(str(exc.value))
        writer = sink.open_writer("k/obj.bin")
        texts += [repr(writer), writer.pending]
        data = payload(300 << 10)
        with pytest.raises(SinkError) as exc:
            writer.write(data)
            writer.commit(sha256_digests(data))
        texts.append(str(exc.value))
        try:
            writer.abort()
        except SinkError as abort_exc:
            texts.append(str(abort_exc))
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert any("az-secret" in t for t in texts)
    for text in texts:
        for needle in needles:
            assert needle not in text, f"secret leaked into: {text[:300]}"
