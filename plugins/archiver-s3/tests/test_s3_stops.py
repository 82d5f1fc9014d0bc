"""Stops that stop (issue #13, item 4) with the S3 sink: a part upload stalled mid-body
(the fault proxy between archiver and moto stops reading, connection open) must not hold
a stop up. Real ``archiver serve`` processes; after the stop no object and no open
multipart upload is left, the job is incomplete and the next run completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from s3_testing import MiB, uploads

from archiver.ledger import open_ledger
from archiver.testing.emulator import ArtifactSpec
from archiver.testing.faultproxy import Fault, FaultProxy

pytestmark = pytest.mark.timeout(150)


def s3_config(emu, tmp_path: Path, endpoint: str, bucket: str, grace: float) -> Path:
    path = tmp_path / "archiver.yaml"
    path.write_text(textwrap.dedent(f"""\
        source:
          type: plangrep
          base_url: {emu.base_url}
          api_key: ${{PLANGREP_API_KEY}}
          backoff_base: 0.01
        sinks:
          - name: vault
            type: s3
            bucket: {bucket}
            endpoint_url: {endpoint}
            region: us-east-1
            part_size: 5MiB
            multipart_threshold: 5MiB
            max_parts_in_flight: 2
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


def start(args, cfg, tmp_path, emu, name):
    with open(tmp_path / f"{name}.log", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "archiver", *args, "-c", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path,
                                env={**os.environ, "PLANGREP_API_KEY": emu.api_key})


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


def is_part(req) -> bool:
    return (req.method == "PUT" and "partNumber" in req.query
            and "archiver-preflight" not in req.path)


def keys(s3, bucket):
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def wait_until(check, what: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("signals, bound", [(1, 2.0 + 5), (2, 2.0)],
                         ids=["sigterm-after-grace", "second-sigterm"])
def test_serve_stop_during_a_stalled_part_upload(plangrep_emulator, tmp_path, moto_endpoint,
                                                 s3, bucket, signals, bound):
    emu = plangrep_emulator
    emu.add_project(project_id="p1", name="P1")
    job = emu.add_job("p1", artifacts=[ArtifactSpec("big.bin", 12 * MiB)])["id"]
    grace = 2.0 if signals == 1 else 30.0
    with FaultProxy(moto_endpoint, timeout=60) as proxy:
        proxy.once(is_part, Fault(stall_request_after=1 * MiB))
        cfg = s3_config(emu, tmp_path, proxy.url, bucket, grace)
        proc = start(["serve", "--test-poll-interval", "0.5"], cfg, tmp_path, emu, "serve")
        try:
            wait_until(proxy.stalled.is_set, "the stalled part upload")
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
        # nothing partial: no object, no open multipart upload, no pending writer
        assert not [k for k in keys(s3, bucket) if k.endswith("big.bin")]
        assert uploads(s3, bucket) == []
        ledger = open_ledger(tmp_path / "state")
        try:
            assert ledger.job_states()[job] == "incomplete"
            assert ledger.summary()["pending_writers"] == 0
        finally:
            ledger.close()
        # the next run completes the job
        nxt = start(["run"], cfg, tmp_path, emu, "next")
        assert nxt.wait(90) == 0, (tmp_path / "next.log").read_text()[-3000:]
    (key,) = [k for k in keys(s3, bucket) if k.endswith("big.bin")]
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == emu.artifact_bytes(job, "big.bin")
    assert uploads(s3, bucket) == []
