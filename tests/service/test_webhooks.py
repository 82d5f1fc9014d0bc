"""The webhook receiver against a running service: every bad input of issue 5 is rejected
or ignored with a logged reason, and nothing is archived because of a payload.

The service polls once at start (before the target job exists) and never again, so a
job can only be archived through a verified delivery. "Nothing happened" is proven with a
barrier: a valid delivery for another job is archived afterwards by the same FIFO loop.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time

import pytest
from service_helpers import SECRET, deliver, job_requests, metric_samples, payload, wait_for

from archiver.service.webhooks import key_candidates, signature
from archiver.testing.emulator import ArtifactSpec
from archiver.testing.emulator_webhooks import sign, signed_headers

SERVE = f"port: 0\nmax_body_bytes: 4096\nsecrets:\n  default: {SECRET}\n"


@pytest.fixture
def svc(make_service):
    return make_service(serve_yaml=SERVE)


@pytest.fixture
def target(emu):
    """A finished job that appears after the only poll."""
    return emu.add_job("p1", artifacts=[ArtifactSpec("t/a.bin", 100)])["id"]


def archived(svc, job_id) -> bool:
    return svc.ledger.job_states().get(job_id) == "archived"


def barrier(svc, emu) -> str:
    other = emu.add_job("p1", artifacts=[ArtifactSpec("b.bin", 10)])["id"]
    assert deliver(svc, payload(other)).status_code == 202
    wait_for(lambda: archived(svc, other), what="the barrier job")
    return other


def rejected(svc, reason: str) -> float:
    text = svc.metrics.render()[0].decode()
    return metric_samples(text)[("archiver_webhook_deliveries_rejected_total",
                                 (("reason", reason),))]


def bad_signature_headers(job_id):
    body = payload(job_id)
    h = signed_headers(SECRET, "msg_forged", body)
    h["webhook-signature"] = "v1," + base64.b64encode(os.urandom(32)).decode()
    return body, h


CASES = {
    "forged signature": lambda j: (*bad_signature_headers(j), 401, "bad_signature"),
    "wrong secret": lambda j: (payload(j), signed_headers("wss_someone_else", "msg_w",
                                                          payload(j)), 401, "bad_signature"),
    "stale timestamp": lambda j: (payload(j), signed_headers(
        SECRET, "msg_s", payload(j), int(time.time()) - 600), 401, "stale_timestamp"),
    "future timestamp": lambda j: (payload(j), signed_headers(
        SECRET, "msg_f", payload(j), int(time.time()) + 600), 401, "future_timestamp"),
    "malformed JSON": lambda j: (b'{"data": {"job": {"id": "' + j.encode() + b'"',
                                 signed_headers(SECRET, "msg_m", b'{"data": {"job": {"id": "'
                                                + j.encode() + b'"'), 400, "malformed_json"),
    "oversized body": lambda j: (payload(j, pad="x" * 5000), signed_headers(
        SECRET, "msg_o", payload(j, pad="x" * 5000)), 413, "too_large"),
    "unsigned": lambda j: (payload(j), {"Content-Type": "application/json"}, 400,
                           "missing_headers"),
    "no job id": lambda j: (b'{"type": "job.status_changed", "data": {}}', signed_headers(
        SECRET, "msg_n", b'{"type": "job.status_changed", "data": {}}'), 400, "bad_payload"),
    "hostile job id": lambda j: (payload("../../etc"), signed_headers(
        SECRET, "msg_h", payload("../../etc")), 400, "bad_payload"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_delivery_is_rejected_and_archives_nothing(svc, emu, target, case, caplog):
    import requests

    body, headers, status, reason = CASES[case](target)
    caplog.set_level(logging.WARNING, logger="archiver.service.webhooks")
    resp = requests.post(svc.url + "/webhooks/plangrep", data=body, headers=headers, timeout=10)
    assert resp.status_code == status
    assert resp.json() == {"status": "rejected", "reason": reason}
    assert any(f"rejected ({reason}" in r.getMessage() for r in caplog.records)
    assert rejected(svc, reason) == 1
    barrier(svc, emu)
    assert job_requests(emu, target) == 0            # never even re-read
    assert target not in svc.ledger.job_states()
    assert svc.queue.high_water <= svc.queue.maxsize
    # the same job with a good delivery is archived: the rejection above was the reason
    assert deliver(svc, payload(target)).status_code == 202
    wait_for(lambda: archived(svc, target))


def test_replayed_delivery_is_ignored(svc, emu, target, caplog):
    import requests

    caplog.set_level(logging.INFO, logger="archiver.service.webhooks")
    body = payload(target)
    headers = signed_headers(SECRET, "msg_replayed", body)
    url = svc.url + "/webhooks/plangrep"
    assert requests.post(url, data=body, headers=headers, timeout=10).status_code == 202
    wait_for(lambda: archived(svc, target))
    again = requests.post(url, data=body, headers=headers, timeout=10)
    assert again.status_code == 200 and again.json()["reason"] == "duplicate"
    assert any("already received" in r.getMessage() for r in caplog.records)
    assert rejected(svc, "duplicate") == 1
    barrier(svc, emu)
    assert job_requests(emu, target) == 1
    assert job_requests(emu, target, "artifact") == 1


def test_unknown_job_is_accepted_then_ignored_after_the_api_says_404(svc, emu, caplog):
    caplog.set_level(logging.WARNING, logger="archiver.service.watch")
    resp = deliver(svc, payload("job_does_not_exist"))
    assert resp.status_code == 202
    key = ("archiver_webhook_jobs_ignored_total", (("reason", "unknown_job"),))
    wait_for(lambda: metric_samples(svc.metrics.render()[0].decode())[key] == 1)
    assert any("does not know this job" in r.getMessage() for r in caplog.records)
    assert [r.status for r in emu.requests.snapshot() if "job_does_not_exist" in r.path] == [404]
    assert "job_does_not_exist" not in svc.ledger.job_states()
    assert not list((svc.watcher.ledger.path.parent.parent / "archive").rglob("job_does_not_exist"))


def test_payload_data_is_never_archived(svc, emu, target, tmp_path):
    body = payload(target, projectId="p1", externalId="evil-external-id",
                   status="completed", expiresAt="2099-01-01T00:00:00Z")
    assert deliver(svc, body).status_code == 202
    wait_for(lambda: archived(svc, target))
    stored = json.loads((tmp_path / "archive" / "p1" / target / "data" / "job.json").read_text())
    assert stored["externalId"] is None and stored["expiresAt"] == emu.job(target)["expiresAt"]
    assert not any(b"evil-external-id" in p.read_bytes()
                   for p in (tmp_path / "archive").rglob("*") if p.is_file())


def test_several_signatures_one_valid(svc, emu, target):
    body = payload(target)
    good = signed_headers(SECRET, "msg_rot", body)
    bad = "v1," + base64.b64encode(os.urandom(32)).decode()
    good["webhook-signature"] = f"v1a,ignored {bad} {good['webhook-signature']}"
    assert deliver(svc, body, secret=None, headers=good).status_code == 202
    wait_for(lambda: archived(svc, target))


def test_per_job_secrets_from_dir_and_file(make_service, emu, tmp_path):
    ids = [emu.add_job("p1", artifacts=[ArtifactSpec("x.bin", 10)])["id"] for _ in range(3)]
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    (secret_dir / ids[0]).write_text(emu.webhook_secret(ids[0]) + "\n")
    secret_file = tmp_path / "secrets.yaml"
    svc = make_service(serve_yaml=f"port: 0\nsecrets:\n  per_job_dir: {secret_dir}\n"
                                  f"  per_job_file: {secret_file}\n")
    ids += [emu.add_job("p1", artifacts=[ArtifactSpec("x.bin", 10)])["id"] for _ in range(2)]
    secret_file.write_text(f"{ids[3]}: {emu.webhook_secret(ids[3])}\n")  # read on change
    ok = deliver(svc, payload(ids[0]), secret=emu.webhook_secret(ids[0]))
    assert ok.status_code == 202
    assert deliver(svc, payload(ids[3]), secret=emu.webhook_secret(ids[3])).status_code == 202
    # another job's secret, and a job nobody has a secret for
    crossed = deliver(svc, payload(ids[4]), secret=emu.webhook_secret(ids[0]))
    assert (crossed.status_code, crossed.json()["reason"]) == (401, "no_secret")
    (secret_dir / ids[4]).write_text(emu.webhook_secret(ids[4]))
    crossed = deliver(svc, payload(ids[4]), secret=emu.webhook_secret(ids[3]))
    assert (crossed.status_code, crossed.json()["reason"]) == (401, "bad_signature")
    wait_for(lambda: archived(svc, ids[0]) and archived(svc, ids[3]))
    assert ids[4] not in svc.ledger.job_states()


def test_unsigned_only_when_explicitly_allowed(make_service, emu):
    svc = make_service(serve_yaml="port: 0\ninsecure_accept_unsigned: true\n")
    job = emu.add_job("p1", artifacts=[ArtifactSpec("u.bin", 10)])["id"]
    assert deliver(svc, payload(job), secret=None).status_code == 202
    wait_for(lambda: archived(svc, job))


# --------------------------------------------------------------------------- the key decision

def test_secret_derivation_decision():
    """wss_ secrets: the UTF-8 bytes of the whole string (what the emulator signs with);
    whsec_ secrets: Standard Webhooks (base64 after the prefix)."""
    body = b'{"type":"job.status_changed"}'
    assert key_candidates("wss_0123456789abcdef")[0] == b"wss_0123456789abcdef"
    mac = signature(b"wss_0123456789abcdef", "msg_1", "1700000000", body)
    assert base64.b64encode(mac).decode() == "kCs830NQw7Jid+VaHizAaqAq7e7XaV/5ZaLCyjOM2OM="
    assert sign("wss_0123456789abcdef", "msg_1", 1700000000, body) == \
        "v1,kCs830NQw7Jid+VaHizAaqAq7e7XaV/5ZaLCyjOM2OM="
    # the reference vector published with the Standard Webhooks specification
    [key] = key_candidates("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    mac = signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", b'{"test": 2432232314}')
    assert base64.b64encode(mac).decode() == "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    # tolerated: wss_<base64> decoded, in case Plangrep encodes like Standard Webhooks
    assert key_candidates("wss_aGVsbG8=") == [b"wss_aGVsbG8=", b"hello"]
