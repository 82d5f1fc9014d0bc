"""Logs for services (issue "At the terminal", part 3): what each verbosity shows, where
``-v``/``-q`` may go, JSON lines for services, and no credential at any level."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import subprocess
import sys
import time

import pytest
import requests
from cli_helpers import archiver, write_config

from archiver.cli_logging import (
    JsonFormatter,
    Redactor,
    install,
    levels,
    redact,
    remember_secrets,
)
from archiver.testing.emulator import ArtifactSpec
from archiver.testing.emulator_webhooks import signed_headers

SECRET = "wss_logging_test_secret"


# --------------------------------------------------------------------------- redaction

@pytest.mark.parametrize("line, secret", [
    # botocore's "Sending http request" line: the headers dict, bytes values
    ("headers={'User-Agent': b'Boto3/1.3', 'Authorization': b'AWS4-HMAC-SHA256 Credential="
     "AKIAEXAMPLE/20240101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, "
     "Signature=0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0', "
     "'X-Amz-Security-Token': b'FQoGZXIvYXdzSESSIONTOKEN'}", ("Signature=0f1e2d", "AKIAEXAMPLE",
                                                           "SESSIONTOKEN")),
    # a canonical request (botocore DEBUG): header lines
    ("CanonicalRequest:\nPUT\n/b/k\n\nhost:s3\nx-amz-security-token:FQoGSESSIONTOKEN\n",
     ("FQoGSESSIONTOKEN",)),
    ("Authorization: Bearer pk_live_abcdef123456", ("pk_live_abcdef123456",)),
    ('{"authorization": "Bearer pk_live_abcdef123456", "x": 1}', ("pk_live_abcdef123456",)),
    ("send: b'GET /x HTTP/1.1\\r\\nAuthorization: Bearer pk_live_abcdef123456\\r\\n'",
     ("pk_live_abcdef123456",)),
    ("token is Bearer ya29.a0AfH6SMBxGOOGLETOKEN", ("ya29.a0AfH6SMBxGOOGLETOKEN",)),
    ("x-goog-iam-authorization-token: ya29.SECRETVALUE", ("ya29.SECRETVALUE",)),
    ("GET https://s3/b/k?X-Amz-Credential=AKIA%2F2024&X-Amz-Signature=abcdef0123456789abcd"
     "&X-Amz-Security-Token=SESSIONTOKEN HTTP/1.1", ("abcdef0123456789abcd", "SESSIONTOKEN",
                                                     "AKIA%2F2024")),
    ("PUT https://storage.googleapis.com/upload?uploadType=resumable&upload_id=ADPycdSESSION",
     ("ADPycdSESSION",)),
    ("Signature:\n0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c", ("0f1e2d3c4b5a6978",)),
])
def test_credentials_are_redacted_from_any_line(line, secret):
    out = Redactor()(line)
    for s in secret:
        assert s not in out, out
    assert "[REDACTED]" in out


def test_ordinary_lines_are_left_alone():
    for line in ("job job_1 archived: 4 objects, 7 KiB received, sinks primary",
                 "the API key was refused (missing, invalid): check source.api_key",
                 "GET /api/open/v1/projects HTTP/1.1 200 1234",
                 "webhook delivery 'm1' accepted: job job_1 queued for a re-read"):
        assert Redactor()(line) == line


def test_every_secret_of_the_configuration_is_redacted(plugins, monkeypatch):
    from archiver.config import load_config
    text = ("source: {type: plangrep, api_key: '${KEY}'}\n"
            "sinks: [{name: a, type: local, root: ./a}]\n"
            "serve: {secrets: {default: '${HOOK}'}}\n"
            "ledger: {url: 'postgresql://arch:dbpass-123@db/archiver'}\n")
    loaded = load_config("f.yaml", plugins.registry, text=text,
                         env={"KEY": "pk_live_in_config_77", "HOOK": "wss_hook_secret_88"})
    remember_secrets(loaded)
    line = "oops pk_live_in_config_77 wss_hook_secret_88 dbpass-123"
    assert redact(line) == "oops [REDACTED] [REDACTED] [REDACTED]"


def test_library_debug_lines_are_redacted_by_the_installed_handler(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    redact.add("pk_live_key_from_config_42")
    undo = install(verbose=3)
    try:
        logging.getLogger("urllib3.connectionpool").debug(
            "headers %s", {"Authorization": "Bearer pk_live_key_from_config_42"})
        logging.getLogger("botocore.endpoint").debug("url ...?X-Amz-Signature=deadbeef1234")
        logging.getLogger("archiver.x").warning("key pk_live_key_from_config_42 in a message")
    finally:
        undo()
    out = stream.getvalue()
    assert out.count("[REDACTED]") >= 3, out
    assert "pk_live_key_from_config_42" not in out and "deadbeef1234" not in out


# --------------------------------------------------------------------------- levels

def test_levels():
    W, I, D, E = logging.WARNING, logging.INFO, logging.DEBUG, logging.ERROR
    assert levels(0, False, False) == (W, W)
    assert levels(1, False, False) == (I, W)
    assert levels(2, False, False) == (D, W)      # libraries stay at WARNING at -vv
    assert levels(3, False, False) == (D, D)      # -vvv: the libraries' debug too
    assert levels(0, False, True) == (I, W)       # services log at INFO
    assert levels(0, True, True) == (E, E)        # -q: errors only


def test_json_lines_carry_the_extra_fields():
    record = logging.LogRecord("archiver.jobwork", logging.INFO, "f", 1,
                               "job %s archived (Authorization: Bearer abcdefgh)", ("j1",), None)
    record.job_id, record.bytes, record.sinks = "j1", 7144, ["primary"]
    doc = json.loads(JsonFormatter().format(record))
    assert doc["level"] == "info" and doc["logger"] == "archiver.jobwork"
    assert doc["job_id"] == "j1" and doc["bytes"] == 7144 and doc["sinks"] == ["primary"]
    assert doc["message"] == "job j1 archived (Authorization: [REDACTED]"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["time"])


# --------------------------------------------------------------------------- the command line

def test_v_and_q_before_or_after_the_command(emu, tmp_path):
    emu.load_demo()
    cfg = write_config(emu, tmp_path)
    after = archiver("run", "-c", cfg, "-v", key=emu.api_key)
    assert after.returncode == 0, after.stderr
    assert re.search(r"INFO archiver.jobwork: job \S+ archived: \d+ objects, .* received, "
                     r"sinks primary", after.stderr)
    assert f"configuration: {cfg} (-c)" in after.stderr      # which file, with -v
    before = archiver("-v", "status", "-c", cfg)
    assert before.returncode == 0 and "configuration:" in before.stderr
    quiet = archiver("run", "-q", "-c", cfg, key=emu.api_key)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    plain = archiver("run", "-c", cfg, key=emu.api_key)
    assert "INFO" not in plain.stderr and plain.stdout.startswith("archived 0 job(s)")


def test_vv_is_ours_and_vvv_the_libraries_too_and_neither_shows_the_key(emu, tmp_path):
    emu.add_project(project_id="proj_l", name="L")
    emu.add_job("proj_l", artifacts=[ArtifactSpec("a.bin", size=1000)])
    key = "pk_live_SECRET_logging_marker_9"
    emu.add_key(key)
    cfg = write_config(emu, tmp_path)
    vv = archiver("-vv", "run", "-c", cfg, key=key)
    assert vv.returncode == 0, vv.stderr
    assert "DEBUG archiver." in vv.stderr and "urllib3" not in vv.stderr
    emu.add_job("proj_l", artifacts=[ArtifactSpec("b.bin", size=1000)])
    vvv = archiver("run", "-vvv", "-c", cfg, key=key)
    assert vvv.returncode == 0, vvv.stderr
    assert "DEBUG urllib3.connectionpool" in vvv.stderr
    assert key not in vvv.stderr + vvv.stdout and "SECRET_logging" not in vvv.stderr


def _service_config(emu, tmp_path, serve: bool):
    extra = f"serve:\n  port: 0\n  secrets:\n    default: {SECRET}\n" if serve else ""
    return write_config(emu, tmp_path, top=extra)


def _run_service(cmd, cfg, key, tmp_path, *extra, until, timeout=30):
    log = tmp_path / f"{cmd}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "archiver", cmd, "-c", str(cfg),
                                 "--test-poll-interval", "0.3", *extra],
                                stdout=subprocess.DEVNULL, stderr=err,
                                env={**__import__("os").environ, "PLANGREP_API_KEY": key})
    try:
        deadline = time.monotonic() + timeout
        while not until(log.read_text()):
            assert time.monotonic() < deadline, log.read_text()
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    return log.read_text()


@pytest.mark.timeout(60)
def test_watch_logs_each_poll_each_job_and_its_stop_without_v(emu, tmp_path):
    emu.load_demo()
    text = _run_service("watch", _service_config(emu, tmp_path, False), emu.api_key,
                        tmp_path, until=lambda t: "poll 2:" in t)
    assert re.search(r"INFO archiver.service.watch: poll 1: 7 job\(s\) listed", text)
    assert len(re.findall(r"INFO archiver.jobwork: job \S+ archived: ", text)) == 3
    assert "INFO archiver.service: stopped (exit code 0)" in text


@pytest.mark.timeout(60)
def test_serve_logs_webhooks_as_json_lines(emu, tmp_path):
    emu.add_project(project_id="proj_w", name="W")
    job = emu.add_job("proj_w", artifacts=[ArtifactSpec("a.json", size=500)])["id"]
    cfg = _service_config(emu, tmp_path, True)
    posted = []

    def until(text: str) -> bool:
        m = re.search(r"serving webhooks on (http://\S+?)/webhooks/plangrep", text)
        if m and not posted:
            body = json.dumps({"type": "job.status_changed",
                               "data": {"job": {"id": job, "status": "completed"}}}).encode()
            url = m.group(1) + "/webhooks/plangrep"
            posted.append(requests.post(url, data=body, timeout=10,
                                        headers=signed_headers(SECRET, "m1", body)).status_code)
            posted.append(requests.post(url, data=body, timeout=10,
                                        headers=signed_headers("wrong", "m2", body)).status_code)
        return bool(posted) and '"event": "stopped"' not in text and "poll 2:" in text

    text = _run_service("serve", cfg, emu.api_key, tmp_path, "--log-format", "json",
                        until=until)
    assert posted == [202, 401]
    docs = [json.loads(line) for line in text.splitlines()]   # every line is JSON
    events = [d.get("event") for d in docs]
    assert "started" in events and "poll" in events and events[-1] == "stopped"
    hooks = [d for d in docs if d.get("event") == "webhook"]
    assert {(d["verdict"], d.get("job_id"), d.get("reason")) for d in hooks} == {
        ("accepted", job, None), ("rejected", None, "bad_signature")}
    archived = [d for d in docs if d.get("event") == "archived"]
    assert archived and archived[0]["job_id"] == job and archived[0]["sinks"] == ["primary"]
    assert SECRET not in text and emu.api_key not in text
