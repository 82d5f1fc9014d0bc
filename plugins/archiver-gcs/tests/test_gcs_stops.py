"""Stops that stop (issue #13, item 4) with the GCS sink: a resumable chunk PUT stalled
mid-body (archiver.testing.faultproxy between archiver and fake-gcs-server stops reading,
connection open) must not hold a stop up. Real ``archiver serve`` processes; after the
stop no object is visible, the session is cancelled (no pending writer), the job is
incomplete and the next run completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from archiver.ledger import open_ledger
from archiver.testing.emulator import ArtifactSpec
from archiver.testing.faultproxy import Fault, FaultProxy

pytestmark = pytest.mark.timeout(150)
MiB = 1 << 20


def gcs_config(emu, tmp_path: Path, bucket: str, prefix: str, grace: float) -> Path:
    path = tmp_path / "archiver.yaml"
    path.write_text(textwrap.dedent(f"""\
        source:
          type: plangrep
          base_url: {emu.base_url}
          api_key: ${{PLANGREP_API_KEY}}
          backoff_base: 0.01
        sinks:
          - name: gcs
            type: gcs
            bucket: {bucket}
            prefix: {prefix}
            chunk_size: 1MiB
            simple_upload_threshold: 1MiB
        state_dir: {tmp_path / 'state'}
        concurrency: 2
        watch:
          grace_period: {grace}
        serve:
          port: 0
          secrets:
            default: wss_stop_test
        """))
    return path


def start(args, cfg, tmp_path, emu, name, emulator_host):
    with open(tmp_path / f"{name}.log", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "archiver", *args, "-c", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path,
                                env={**os.environ, "PLANGREP_API_KEY": emu.api_key,
                                     "STORAGE_EMULATOR_HOST": emulator_host})


def stop(proc, signals: int) -> float:
    for n in range(signals):
        if n:
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("still running 60 s after the stop") from None
    return time.monotonic() - t0


def is_chunk(req) -> bool:
    """A data-carrying PUT to a resumable session (not a status query)."""
    return (req.method == "PUT" and "upload_id" in req.query
            and not req.headers.get("content-range", "").startswith("bytes */"))


def wait_until(check, what: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("signals, bound", [(1, 2.0 + 5), (2, 2.0)],
                         ids=["sigterm-after-grace", "second-sigterm"])
def test_serve_stop_during_a_stalled_chunk_upload(plangrep_emulator, tmp_path, gcs_server,
                                                  gcs_client, bucket_name, signals, bound):
    emu = plangrep_emulator
    emu.add_project(project_id="p1", name="P1")
    job = emu.add_job("p1", artifacts=[ArtifactSpec("big.bin", 4 * MiB)])["id"]
    grace = 2.0 if signals == 1 else 30.0
    prefix = f"stop-{uuid.uuid4().hex[:8]}"

    def names():
        return [b.name for b in gcs_client.list_blobs(bucket_name, prefix=prefix)]

    with FaultProxy(gcs_server, timeout=60) as proxy:
        proxy.once(is_chunk, Fault(stall_request_after=256 << 10))
        cfg = gcs_config(emu, tmp_path, bucket_name, prefix, grace)
        proc = start(["serve", "--test-poll-interval", "0.5"], cfg, tmp_path, emu, "serve",
                     proxy.url)
        try:
            wait_until(proxy.stalled.is_set, "the stalled chunk upload")
            time.sleep(0.3)
        except BaseException:
            proc.kill()
            raise
        elapsed = stop(proc, signals)
        log = (tmp_path / "serve.log").read_text()
        assert proc.returncode == 0, log[-3000:]
        assert elapsed < bound, elapsed
        if signals == 1:
            assert elapsed >= grace - 0.5
        assert "Traceback" not in log, log[-3000:]
        assert not [n for n in names() if n.endswith("big.bin")]
        # the session was cancelled: a DELETE went out and no pending writer is left
        assert any(r.method == "DELETE" and "upload_id" in r.query for r in proxy.seen())
        ledger = open_ledger(tmp_path / "state")
        try:
            assert ledger.job_states()[job] == "incomplete"
            assert ledger.summary()["pending_writers"] == 0
        finally:
            ledger.close()
        nxt = start(["run"], cfg, tmp_path, emu, "next", proxy.url)
        assert nxt.wait(90) == 0, (tmp_path / "next.log").read_text()[-3000:]
    (name,) = [n for n in names() if n.endswith("big.bin")]
    assert gcs_client.bucket(bucket_name).blob(name).download_as_bytes() == \
        emu.artifact_bytes(job, "big.bin")
