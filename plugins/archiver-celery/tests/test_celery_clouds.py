"""A Celery fleet writing to local disk, S3 (moto, versioned bucket) and GCS
(fake-gcs-server) at once, with a worker killed in the middle of a multipart upload: one
object version per key, no open multipart upload after ``archiver cleanup``, every job
archived once, the other artifacts downloaded once."""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from fleet import add_small_jobs
from test_celery_faults import slow_job, writer_pid
from worker_helpers import wait_for

from archiver.testing.servers import fake_gcs_server, moto_server

boto3 = pytest.importorskip("boto3")
storage = pytest.importorskip("google.cloud.storage")


@pytest.fixture(scope="module")
def clouds():
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as mp, moto_server() as s3_url, \
            fake_gcs_server() as gcs_url:
        for k, v in {**env, "STORAGE_EMULATOR_HOST": gcs_url}.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        yield s3_url, {**env, "STORAGE_EMULATOR_HOST": gcs_url}


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_worker_killed_mid_multipart_upload_leaves_one_version_per_key(
        make_fleet, emu, broker, clouds):
    s3_url, env = clouds
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    bucket = f"fleet-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    from google.auth.credentials import AnonymousCredentials
    gcs = storage.Client(project="test", credentials=AnonymousCredentials())
    gbucket = gcs.create_bucket(f"fleet-{uuid.uuid4().hex[:10]}")
    big = slow_job(emu, size=12 << 20, delay=0.02)
    jobs = [big, *add_small_jobs(emu, 8)]
    fleet = make_fleet(env=env, extra_sink=f"""\
  - name: vault
    type: s3
    bucket: {bucket}
    endpoint_url: {s3_url}
    region: us-east-1
    prefix: archive/
    part_size: 5MiB
    multipart_threshold: 5MiB
    max_parts_in_flight: 2
  - name: replica
    type: gcs
    bucket: {gbucket.name}
    prefix: archive
    chunk_size: 1MiB
    simple_upload_threshold: 1MiB
""")
    workers = fleet.workers(2)
    disp = fleet.dispatcher()

    def uploading() -> int | None:
        open_uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads") or []
        if any(u["Key"].endswith("big.bin") for u in open_uploads):
            return writer_pid(fleet, "big.bin")
        return None

    pid = wait_for("the multipart upload of big.bin", uploading, timeout=90,
                   procs=(workers, disp))
    os.kill(pid, signal.SIGKILL)
    emu.faults.slow_body = 0.0
    fleet.wait_archived(jobs, timeout=180, procs=(workers, disp))
    fleet.stop_all()
    p = fleet.archiver("cleanup", "-c", str(fleet.config))
    assert p.wait(120) == 0, p.stderr[-3000:]
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    versions = s3.list_object_versions(Bucket=bucket).get("Versions") or []
    keys = [v["Key"] for v in versions]
    assert keys and len(keys) == len(set(keys)), "a key has two versions"
    assert any(k.endswith("big.bin") for k in keys)
    blobs = list(gcs.list_blobs(gbucket.name, versions=True))
    names = [b.name for b in blobs]
    assert names and len(names) == len(set(names)), "a GCS object has two generations"
    assert {k.removeprefix("archive/") for k in keys} == \
        {n.removeprefix("archive/") for n in names}
    fleet.check_invariants(jobs, artifacts=len(jobs) + 1, refetched={"big.bin", "small.json"})
    gcs.close()
