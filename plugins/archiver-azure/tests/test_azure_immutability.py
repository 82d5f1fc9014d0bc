"""Version-level immutability: sent with the bytes, read back, re-applied, refused.

Azurite ignores the policy headers and answers the policy/legal-hold calls with 501, so
what it can show is the failure path (plain Azurite); the rest is checked on what the
client sends and on what the sink does with the answers of :class:`Proxy` standing in
for Azure (it keeps the policy each blob was created or set with).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from azure_proxy import LEGAL_HOLD, POLICY_MODE, POLICY_UNTIL, Proxy
from azure_helpers import MiB

from archiver.errors import SinkError
from archiver.testing.sink_contract import payload, store

POLICY = {"mode": "Unlocked", "retain_days": 30, "legal_hold": True}


@pytest.fixture
def azure_like(azurite):
    proxies = []

    def make(**options) -> Proxy:
        p = Proxy(azurite.port, immutability=True, **options).start()
        proxies.append(p)
        return p
    yield make
    for p in proxies:
        p.stop()


def sink_on(make_sink, azurite, proxy, **options):
    return make_sink(account_url=proxy.account_url(azurite.account),
                     account_name=azurite.account, account_key=azurite.key, **options)


@pytest.mark.parametrize("size", [1000, 2 * MiB + 7], ids=["put-blob", "block-list"])
def test_policy_and_hold_sent_with_the_bytes_and_read_back(make_sink, azurite, azure_like,
                                                           size):
    proxy = azure_like()
    sink = sink_on(make_sink, azurite, proxy, block_size=MiB, immutability=POLICY)
    sink.preflight()  # container properties say version-level immutability is on
    before = datetime.now(timezone.utc)
    stored = store(sink, "imm/obj.bin", payload(size, seed=1))
    creating = [r for r in proxy.requests("PUT") if r.comp in ("", "blocklist")
                and r.path.endswith("imm/obj.bin")]
    assert len(creating) == 1
    sent = creating[0].headers
    assert sent[POLICY_MODE] == "Unlocked" and sent[LEGAL_HOLD] == "true"
    until = datetime.strptime(sent[POLICY_UNTIL], "%a, %d %b %Y %H:%M:%S GMT").replace(
        tzinfo=timezone.utc)
    assert before + timedelta(days=30) - timedelta(seconds=2) <= until
    assert stored.extra["retention"]["mode"] == "Unlocked"
    assert stored.extra["legal_hold"] is True
    assert proxy.requests("PUT", "immutabilityPolicies") == []  # nothing to re-apply
    now = sink.retention_in_force("imm/obj.bin")
    assert now["mode"] == "Unlocked" and now["legal_hold"] is True
    assert datetime.fromisoformat(now["retain_until"]) == until


def test_a_policy_missing_after_the_commit_is_applied_again(make_sink, azurite, azure_like):
    proxy = azure_like(drop_on_create=True)  # the service "forgot" the creation headers
    sink = sink_on(make_sink, azurite, proxy, immutability={**POLICY, "mode": "Locked"})
    stored = store(sink, "imm/again.bin", b"x" * 100)
    [policy] = proxy.requests("PUT", "immutabilityPolicies")
    assert policy.headers[POLICY_MODE] == "Locked"
    assert len(proxy.requests("PUT", "legalhold")) == 1
    assert stored.extra["retention"]["mode"] == "Locked" and stored.extra["legal_hold"]


def test_an_existing_blob_is_held_to_the_policy_too(make_sink, azurite, azure_like):
    proxy = azure_like()
    plain = sink_on(make_sink, azurite, proxy)
    store(plain, "imm/old.bin", b"old")  # stored before immutability was configured
    sink = sink_on(make_sink, azurite, proxy, immutability=POLICY)
    again = store(sink, "imm/old.bin", b"old")
    assert again.existed is True and again.extra["legal_hold"] is True
    assert len(proxy.requests("PUT", "immutabilityPolicies")) == 1


def test_azurite_cannot_apply_it_so_the_copy_does_not_count(make_sink):
    sink = make_sink(immutability={"mode": "Unlocked", "retain_until":
                                   (date.today() + timedelta(days=400)).isoformat()})
    with pytest.raises(SinkError) as exc:
        sink.preflight()
    assert "version-level immutability is not enabled" in str(exc.value)
    assert "azure-test" in str(exc.value)
    with pytest.raises(SinkError) as exc:
        store(sink, "imm/refused.bin", b"data")
    text = str(exc.value)
    assert "immutability not in force" in text and "azure-test" in text
    assert "HTTP 501" in text  # Azurite's stub, named in the error


def test_retention_for_dry_run_needs_no_io(make_sink):
    sink = make_sink(immutability=POLICY, account_url="http://127.0.0.1:9/none",
                     connection_string=None, account_name="a", account_key="a" * 20)
    shown = sink.retention("k")
    assert shown["mode"] == "Unlocked" and shown["legal_hold"] is True
    assert make_sink().retention("k") is None
