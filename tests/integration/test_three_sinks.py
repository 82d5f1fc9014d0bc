"""One run, three sinks (local, S3 on moto, GCS on fake-gcs-server), one download each.

The S3 sink is the compliance copy (byte-exact, Object Lock, SHA-256 verified by the
server); the local sink gets decompressed copies; GCS is a byte-exact replica.
"""

from __future__ import annotations

import gzip
import hashlib
import uuid

import pytest

from archiver.config import load_config
from archiver.ledger import open_ledger
from archiver import api
from archiver.runtime import Runtime
from archiver.plugins import build_plugin_manager
from archiver.testing.configs import basic_config
from archiver.testing.emulator import ArtifactSpec, Emulator
from archiver.testing.servers import fake_gcs_server, moto_server

boto3 = pytest.importorskip("boto3")
storage = pytest.importorskip("google.cloud.storage")


@pytest.fixture(scope="module")
def clouds():
    with pytest.MonkeyPatch.context() as mp, moto_server() as s3_url, fake_gcs_server() as gcs_url:
        for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1",
                           "STORAGE_EMULATOR_HOST": gcs_url}.items():
            mp.setenv(var, value)
        mp.delenv("AWS_PROFILE", raising=False)
        yield s3_url, gcs_url


def test_three_sinks_one_download_each(clouds, tmp_path):
    s3_url, _ = clouds
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    bucket = f"lock-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    gcs = storage.Client(project="test", credentials=None)
    gbucket = gcs.create_bucket(f"rep-{uuid.uuid4().hex[:12]}")
    with Emulator() as emu:
        emu.add_project(project_id="proj_t", name="T")
        job = emu.add_job("proj_t", artifacts=[
            ArtifactSpec(path="report.json.gz", size=200_000, compress="gzip"),
            ArtifactSpec(path="big.bin", size=7 << 20),
            ArtifactSpec(path="sheets/a b.png", size=3000)])
        extra = f"""\
  - name: compliance
    type: s3
    bucket: {bucket}
    endpoint_url: {s3_url}
    region: us-east-1
    prefix: archive/
    part_size: 5MiB
    multipart_threshold: 5MiB
    object_lock: {{mode: GOVERNANCE, retain_days: 30}}
  - name: replica
    type: gcs
    bucket: {gbucket.name}
    prefix: archive
    chunk_size: 1MiB
    simple_upload_threshold: 1MiB
"""
        text = basic_config(emu, tmp_path, extra_sink=extra).replace(
            "    root: " + str(tmp_path / "archive") + "\n",
            "    root: " + str(tmp_path / "archive") + "\n    transforms:\n"
            "      - type: decompress\n")
        plugins = build_plugin_manager()
        cfg = tmp_path / "c.yaml"
        cfg.write_text(text)
        loaded = load_config(cfg, plugins.registry, env={"PLANGREP_API_KEY": emu.api_key})
        ledger = open_ledger(loaded.settings.state_dir)
        pipeline = Runtime(loaded, plugins, ledger)
        report = api.run(pipeline)
        pipeline.close()
        assert report.archived == [job["id"]], report.as_dict()
        paths = emu.artifact_paths(job["id"])
        assert emu.count(route="artifact") + emu.count(route="project_artifact") == len(paths)

        prefix = f"archive/proj_t/{job['id']}/data/"
        for path in paths:
            served = emu.artifact_bytes(job["id"], path)
            key = prefix + "artifacts/" + path
            head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
            if len(served) < 5 << 20:  # moto drops Object Lock on multipart uploads (README)
                assert head["ObjectLockMode"] == "GOVERNANCE"
                assert head["ObjectLockRetainUntilDate"]
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == served
            blob = gbucket.get_blob(key)
            assert blob is not None and blob.crc32c and blob.download_as_bytes() == served
            local_name = path[:-3] if path.endswith(".gz") else path
            local = tmp_path / "archive" / "proj_t" / job["id"] / "data" / "artifacts" / local_name
            want = gzip.decompress(served) if path.endswith(".gz") else served
            assert local.read_bytes() == want
        sha = s3.head_object(Bucket=bucket, Key=prefix + "artifacts/big.bin",
                             ChecksumMode="ENABLED")
        assert "ChecksumSHA256" in sha  # the server was asked to verify SHA-256

        copies = {(c["path"], c["sink"]): c for c in ledger.job_report(job["id"])["copies"]}
        gz = emu.artifact_bytes(job["id"], "report.json.gz")
        for sink in ("compliance", "replica"):
            assert copies[("report.json.gz", sink)]["stored"]["sha256"] == \
                hashlib.sha256(gz).hexdigest()
            assert copies[("report.json.gz", sink)]["provider_checksum"]
        assert copies[("report.json.gz", "primary")]["stored"]["sha256"] == \
            hashlib.sha256(gzip.decompress(gz)).hexdigest()
        assert copies[("report.json.gz", "primary")]["received"]["sha256"] == \
            hashlib.sha256(gz).hexdigest()

        before = len(emu.requests)
        pipeline = Runtime(loaded, plugins, ledger)
        again = api.run(pipeline)
        pipeline.close()
        assert again.archived == [] and again.objects_written == 0 and again.skipped == 1
        assert emu.count(route="artifact") + emu.count(route="project_artifact") == len(paths)
        assert len(emu.requests) - before <= 2  # listing only
        ledger.close()
