"""``archiver watch`` / ``archiver serve`` as real subprocesses.

The "done when" test of issue 5: ``archiver serve`` against the emulator producing jobs
over time, with webhooks some of which are lost, duplicated or forged; every completed job
is archived exactly once before its expiry, forged deliveries are rejected, /metrics
matches the ledger, and a SIGTERM mid-download leaves nothing partial.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone

import requests
from service_helpers import metric_samples, partials, service_config, wait_for

from archiver.ledger import open_ledger
from archiver.testing.emulator import ArtifactSpec


def start(cmd, cfg, tmp_path, key, *extra):
    with open(tmp_path / f"{cmd}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "archiver.cli", cmd, "-c", str(cfg), *extra],
            stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "PLANGREP_API_KEY": key})


def run(cmd, cfg, key, *extra):
    return subprocess.run([sys.executable, "-m", "archiver.cli", cmd, "-c", str(cfg), *extra],
                          check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PLANGREP_API_KEY": key})


def test_serve_refuses_to_start_without_a_secret(emu, tmp_path):
    out = run("serve", service_config(emu, tmp_path, serve="port: 0\n"), emu.api_key)
    assert out.returncode == 2 and "serve.secrets" in out.stderr
    assert emu.count() == 0


def test_watch_refuses_a_fast_poll_interval(emu, tmp_path):
    out = run("watch", service_config(emu, tmp_path, watch="poll_interval: 2\n"), emu.api_key)
    assert out.returncode == 2
    assert "watch.poll_interval" in out.stderr and "at least 5 seconds" in out.stderr
    assert emu.count() == 0


def test_watch_exits_3_when_the_key_is_refused(emu, tmp_path):
    out = run("watch", service_config(emu, tmp_path), "pk_wrong", "--test-poll-interval", "0.1")
    assert out.returncode == 3 and "refused" in out.stderr
    assert "pk_wrong" not in out.stderr
    assert emu.count(route="jobs") == 1


def scrape(url):
    return metric_samples(requests.get(url + "/metrics", timeout=10).text)


def jobs_metric(m, state):
    return m[("archiver_jobs", (("state", state),))]


def test_serve_end_to_end_with_lost_duplicated_and_forged_webhooks(emu, tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    cfg = service_config(emu, tmp_path, watch="grace_period: 0.3\n",
                         serve=f"port: 0\nsecrets:\n  per_job_dir: {secrets}\n")
    proc = start("serve", cfg, tmp_path, emu.api_key, "--test-poll-interval", "1")
    log_path = tmp_path / "serve.log"
    try:
        wait_for(lambda: "serving webhooks on" in log_path.read_text(), what="startup")
        url = re.search(r"serving webhooks on (http://\S+?)/webhooks/plangrep",
                        log_path.read_text()).group(1)
        emu.configure_webhooks(url + "/webhooks/plangrep", drop=0.25, duplicate=0.3,
                               forge=0.3, jitter=0.1, seed=5, retry_delay=0.1)

        # jobs produced over ~2 s: most complete, some fail, one expires unfinished
        finals = ["completed"] * 9 + ["completed_with_errors"] * 2 + ["failed", "cancelled"]
        soon = datetime.now(timezone.utc) + timedelta(seconds=90)
        expected: dict[str, str] = {}
        for n, final in enumerate(finals + ["expired", "processing"]):
            job = emu.add_job("p1", status="provisioning",
                              expires_at=soon if n % 3 == 0 else None,
                              artifacts=[ArtifactSpec(f"r/{n}.json", 1500 + n),
                                         ArtifactSpec("thumbs/p1.png", 700)])["id"]
            (secrets / job).write_text(emu.webhook_secret(job))
            t = 0.15 * n
            steps = [(t, "processing")] + ([] if final == "processing" else [(t + 0.3, final)])
            emu.progress(job, steps)
            expected[job] = {"completed": "archived", "completed_with_errors": "archived",
                             "failed": "nothing_to_store", "cancelled": "nothing_to_store",
                             "expired": "lost", "processing": "waiting"}[final]
        want = Counter(expected.values())
        wait_for(lambda: all(jobs_metric(scrape(url), s) == n for s, n in want.items()),
                 timeout=40, what="every job settled")
        # job_done hooks run just after the ledger write
        wait_for(lambda: scrape(url)[("archiver_jobs_processed_total",
                                      (("state", "archived"),))] >= want["archived"])
        assert emu.timeline.wait_idle(10) and emu.webhooks.wait_idle(30)

        # the webhooks really were lost, duplicated and forged
        kinds = Counter(d.kind for d in emu.webhooks.planned)
        assert kinds["dropped"] and kinds["duplicate"] and kinds["forged"]
        forged = emu.webhooks.attempts("forged")
        assert forged and {a.http_status for a in forged} == {401}

        ledger = open_ledger(tmp_path / "state")
        try:
            assert {j: s for j, s in ledger.job_states().items()} == expected
            # exactly once, before expiry
            results = Counter(r.path for r in emu.requests.snapshot() if r.route == "result")
            downloads = Counter((r.path, r.query["path"]) for r in emu.requests.snapshot()
                                if r.route == "artifact")
            archived = [j for j, s in expected.items() if s == "archived"]
            assert sorted(results) == sorted(f"/api/open/v1/jobs/{j}/result" for j in archived)
            assert set(results.values()) == {1}
            assert len(downloads) == 2 * len(archived) and set(downloads.values()) == {1}
            with ledger._lock:
                rows = ledger._db.execute("SELECT job_id, archived_at, expires_at FROM jobs "
                                          "WHERE state='archived'").fetchall()
            for job_id, archived_at, expires_at in rows:
                expiry = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
                assert archived_at < expiry.timestamp(), job_id
            # /metrics matches the ledger
            m, summary = scrape(url), ledger.summary()
            for state in ("archived", "incomplete", "lost", "nothing_to_store", "waiting"):
                assert jobs_metric(m, state) == summary["jobs"].get(state, 0)
            sink = summary["sinks"]["primary"]
            assert m[("archiver_stored_objects", (("sink", "primary"),))] == sink["objects"]
            assert m[("archiver_stored_bytes", (("sink", "primary"),))] == sink["bytes"]
            assert m[("archiver_webhook_deliveries_rejected_total",
                      (("reason", "bad_signature"),))] == len(forged)
            assert m[("archiver_jobs_processed_total", (("state", "archived"),))] == \
                len(archived)
        finally:
            ledger.close()

        # SIGTERM while a large artifact is being downloaded
        emu.faults.slow_body = 0.05
        big = emu.add_job("p1", status="processing",
                          artifacts=[ArtifactSpec("big.bin", 4 << 20)])["id"]
        (secrets / big).write_text(emu.webhook_secret(big))
        emu.set_status(big, "completed")
        wait_for(lambda: any(r.route == "artifact" and r.query.get("path") == "big.bin"
                             for r in emu.requests.snapshot()), what="the big download")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert "SIGTERM: stopping" in log
    assert not partials(tmp_path / "archive")
    assert not (tmp_path / "archive" / "p1" / big / "data" / "artifacts" / "big.bin").exists()
    ledger = open_ledger(tmp_path / "state")
    try:
        assert ledger.job_states()[big] == "incomplete"
        assert ledger.summary()["pending_writers"] == 0
    finally:
        ledger.close()
    assert emu.api_key not in log
    assert not any(emu.webhook_secret(j) in log for j in expected)
