"""Issue "Many workers, one ledger", with the S3 sink: ``kill -9`` of the worker process
in the middle of a multipart upload (real processes, the emulator, moto over HTTP)."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections import Counter
from pathlib import Path

from s3_testing import uploads

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "workers"))
from worker_helpers import (  # noqa: E402
    LEASE,
    LedgerView,
    Proc,
    add_jobs,
    children_of,
    env_for,
    gets_of,
    wait_for,
)


def s3_config(emu, tmp_path: Path, endpoint: str, bucket: str) -> Path:
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
            prefix: archive/
            endpoint_url: {endpoint}
            region: us-east-1
            part_size: 5MiB
            multipart_threshold: 5MiB
            max_parts_in_flight: 2
        state_dir: {tmp_path / 'state'}
        concurrency: 4
        """) + LEASE)
    return path


def test_kill_9_mid_multipart_upload(plangrep_emulator, tmp_path, moto_endpoint, s3, bucket):
    """``run --workers 2`` into a versioned bucket: the child uploading big.bin (16 MiB,
    5 MiB parts) is killed once its multipart upload is open. The supervisor aborts the
    dead child's upload and another child stores the object: every job archived once, one
    version per key, and no open multipart upload (after ``archiver cleanup`` either)."""
    emu = plangrep_emulator
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    slow, small = add_jobs(emu)
    cfg = s3_config(emu, tmp_path, moto_endpoint, bucket)
    env = env_for(emu, entry_points=True)
    view = LedgerView(tmp_path / "state")
    procs: list[Proc] = []
    try:
        run = Proc(tmp_path, "run", ["run", "-c", str(cfg), "--workers", "2", "--json"], env)
        procs.append(run)
        wait_for("the multipart upload of big.bin", lambda: view.holder_pid("big.bin")
                 and any(u["Key"].endswith("big.bin") for u in uploads(s3, bucket)),
                 procs=(run,))
        victim = view.holder_pid("big.bin")
        assert victim in children_of(run.pid)
        wait_for("the small jobs", lambda: all(view.states().get(j) == "archived"
                                               for j in small), procs=(run,))
        os.kill(victim, signal.SIGKILL)
        assert run.wait(60) == 0, run.stderr
        report = run.json()
        assert sorted(report["archived"]) == sorted([slow, *small]), report
        assert "died with signal SIGKILL" in run.stderr
        events, audit = view.archived_records()
        assert {j: (events[j], audit[j]) for j in [slow, *small]} == \
            {j: (1, 1) for j in [slow, *small]}
        assert gets_of(emu, "big.bin") == 2 and not view.pending()
        assert uploads(s3, bucket) == []  # the dead child's upload was aborted at once

        listing = s3.list_object_versions(Bucket=bucket)
        versions = Counter(v["Key"] for v in listing.get("Versions") or [])
        assert not listing.get("DeleteMarkers")
        assert set(versions.values()) == {1}, versions  # bag tag files too
        # job.json, result.json and two artifacts per job
        assert len([k for k in versions if "/data/" in k]) == 4 * (1 + len(small))
        (big,) = [k for k in versions if k.endswith("big.bin")]
        body = s3.get_object(Bucket=bucket, Key=big)["Body"].read()
        assert body == emu.artifact_bytes(slow, "big.bin")

        cleanup = Proc(tmp_path, "cleanup", ["cleanup", "-c", str(cfg), "--json"], env)
        procs.append(cleanup)
        assert cleanup.wait(30) == 0, cleanup.stderr
        assert cleanup.json()["discarded"] == [] and uploads(s3, bucket) == []
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.kill()
        view.close()
