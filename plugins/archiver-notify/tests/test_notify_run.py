"""Real ``archiver run`` passes over the Plangrep emulator, notifying real receivers:
every outcome once per job (worker processes included), and dead endpoints that neither
fail nor noticeably slow the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

from click.testing import CliRunner
from notify_receiver import SECRET, SLACK_TOKEN, verify

from archiver.cli import cli
from archiver.testing.configs import basic_config
from archiver.testing.servers import free_port


def config(emu, tmp_path, endpoints: str, extra: str = "") -> str:
    path = tmp_path / "archiver.yaml"
    path.write_text(basic_config(emu, tmp_path, top="notify:\n  flush_timeout: 1\n"
                                 "  endpoints:\n" + endpoints + extra))
    return str(path)


def env(emu) -> dict[str, str]:
    return {"PLANGREP_API_KEY": emu.api_key, "NOTIFY_SECRET": SECRET}


def proc_env(emu) -> dict[str, str]:
    """The environment of an ``archiver`` subprocess: every installed plugin loads."""
    out = {k: v for k, v in os.environ.items()
           if k not in ("ARCHIVER_PLUGINS", "ARCHIVER_DISABLE_PLUGINS",
                        "ARCHIVER_LOAD_ENTRY_POINTS")}
    return {**out, **env(emu)}


def invoke(args, emu):
    e = {**env(emu), "ARCHIVER_PLUGINS": None, "ARCHIVER_DISABLE_PLUGINS": None,
         "ARCHIVER_LOAD_ENTRY_POINTS": None}
    return CliRunner().invoke(cli, args, env=e, catch_exceptions=False)


def test_archived_incomplete_lost_and_expiring_are_notified(emu, tmp_path, receiver):
    hook, slack = receiver(), receiver()
    archived = emu.add_job("proj_a")["id"]
    broken = emu.add_job("proj_a")["id"]
    emu.faults.fault_paths = {emu.artifact_paths(broken)[0]}
    emu.faults.wrong_length_n = 1000  # every download of that artifact is cut short
    lost = emu.add_job("proj_a")["id"]
    emu.expire(lost)
    soon = datetime.now(timezone.utc) + timedelta(hours=2)
    expiring = emu.add_job("proj_a", status="processing", expires_at=soon)["id"]
    cfg = config(emu, tmp_path,
                 "    - {name: hook, url: '" + hook.url + "', secret: '${NOTIFY_SECRET}'}\n"
                 "    - {name: slack, url: '" + slack.url + f"/services/{SLACK_TOKEN}', "
                 "format: slack, events: [lost, expiring]}\n",
                 "artifact_attempts: 1\n")
    result = invoke(["run", "-c", cfg], emu)
    assert result.exit_code != 2, result.output
    got = {m.json["data"]["job_id"]: m for m in hook.wait_for(4)}
    assert {k: m.json["type"] for k, m in got.items()} == {
        archived: "job.archived", broken: "job.incomplete", lost: "job.lost",
        expiring: "job.expiring"}
    assert all(verify(m) for m in got.values())
    assert got[archived].json["data"]["stored"] == 4  # job.json, result.json, 2 artifacts
    assert got[broken].json["data"]["failed"] == 1
    assert got[expiring].json["data"]["state"] == "waiting"
    assert 7000 < got[expiring].json["data"]["expires_in"] <= 7200
    texts = sorted(m.json["text"] for m in slack.wait_for(2))
    assert len(texts) == 2 and "EXPIRES SOON" in texts[0] and "LOST" in texts[1]
    invoke(["run", "-c", cfg], emu)  # already archived, lost, warned: nothing new
    time.sleep(0.3)
    kinds = sorted(m.json["type"] for m in hook.received)
    assert kinds.count("job.archived") == 1 and kinds.count("job.expiring") == 1


def test_dead_endpoints_neither_fail_nor_slow_the_run(emu, tmp_path, receiver):
    for _ in range(3):
        emu.add_job("proj_a")
    slow, failing = receiver(delay=30), receiver(status=500)
    cfg = config(emu, tmp_path,
                 "    - {name: slow, url: '" + slow.url + "', timeout: 0.5, "
                 "secret: '${NOTIFY_SECRET}'}\n"
                 "    - {name: failing, url: '" + failing.url + f"/services/{SLACK_TOKEN}', "
                 "format: slack, attempts: 3, backoff: 0.05}\n"
                 f"    - {{name: dead, url: 'http://127.0.0.1:{free_port()}/hook'}}\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "archiver", "-vv", "run", "-c", cfg],
                          env=proc_env(emu), capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    status = subprocess.run([sys.executable, "-m", "archiver", "status", "--json", "-c", cfg],
                            env=proc_env(emu), capture_output=True, text=True, timeout=60)
    assert json.loads(status.stdout)["jobs"]["archived"] == 3
    err = proc.stderr
    assert "notify endpoint failing (http://127.0.0.1:" in err and "HTTP 500" in err
    assert "notify endpoint dead (http://127.0.0.1:" in err and "connection refused" in err
    assert "notify endpoint slow (http://127.0.0.1:" in err and "not delivered" in err
    assert SLACK_TOKEN not in err and SECRET not in err and "/hook" not in err
    # The slow endpoint alone would take 3 jobs x 4 attempts x 0.5 s + backoff; the run
    # waits for it only flush_timeout (1 s) at exit.
    assert elapsed < 12, elapsed


def test_worker_processes_notify_each_job_once(emu, tmp_path, receiver):
    jobs = {emu.add_job("proj_a")["id"] for _ in range(4)}
    hook = receiver()
    cfg = config(emu, tmp_path, "    - {name: hook, url: '" + hook.url + "'}\n")
    proc = subprocess.run([sys.executable, "-m", "archiver", "run", "--workers", "2",
                           "-c", cfg], env=proc_env(emu), capture_output=True,
                          text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    got = hook.wait_for(4, timeout=5)
    time.sleep(0.3)
    assert sorted(m.json["data"]["job_id"] for m in hook.received) == sorted(jobs)
    assert {m.json["type"] for m in got} == {"job.archived"}
    assert len({m.json["data"]["pid"] for m in got}) >= 1
