"""End to end: the Plangrep emulator -> archiver's pipeline -> local and s3 sinks (moto)."""

from __future__ import annotations

import hashlib
import textwrap

import pytest
from s3_testing import MiB, uploads

from archiver.config import load_config
from archiver.ledger import open_ledger
from archiver import api
from archiver.runtime import Runtime
from archiver.plugins import build_plugin_manager
from archiver.testing.emulator import ArtifactSpec

BIG = 12 * MiB


def config_text(emu, tmp_path, endpoint: str, bucket: str, attempts: int) -> str:
    return textwrap.dedent(f"""\
        source:
          type: plangrep
          base_url: {emu.base_url}
          api_key: ${{PLANGREP_API_KEY}}
          backoff_base: 0.01
        sinks:
          - name: primary
            type: local
            root: {tmp_path / 'archive'}
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
        concurrency: 2
        artifact_attempts: {attempts}
        """)


def run(emu, tmp_path, endpoint, bucket, attempts=4):
    plugins = build_plugin_manager(entry_points=True)
    loaded = load_config("archiver.yaml", plugins.registry,
                         text=config_text(emu, tmp_path, endpoint, bucket, attempts),
                         env={"PLANGREP_API_KEY": emu.api_key})
    ledger = open_ledger(loaded.settings.state_dir)
    pipeline = Runtime(loaded, plugins, ledger)
    try:
        return api.run(pipeline), ledger.job_report
    finally:
        pipeline.close()


@pytest.fixture
def job(plangrep_emulator):
    emu = plangrep_emulator
    emu.add_project(project_id="proj_s3", name="S3")
    return emu.add_job("proj_s3", artifacts=[ArtifactSpec(path="small.json", size=5000),
                                             ArtifactSpec(path="dir/big.bin", size=BIG)])


def s3_objects(s3, bucket: str) -> dict[str, int]:
    listing = s3.list_objects_v2(Bucket=bucket).get("Contents") or []
    return {o["Key"]: o["Size"] for o in listing}


def big_key(stored: dict[str, int]) -> str:
    (key,) = [k for k in stored if k.endswith("big.bin")]
    return key


def test_run_archives_into_s3_and_rerun_writes_nothing(plangrep_emulator, job, tmp_path,
                                                       moto_endpoint, s3, bucket):
    emu = plangrep_emulator
    report, job_report = run(emu, tmp_path, moto_endpoint, bucket)
    assert report.exit_code == 0, report.as_dict()
    stored = s3_objects(s3, bucket)
    # The same layout as the local sink, under the prefix, with the same bytes.
    local = tmp_path / "archive"
    files = {"archive/" + p.relative_to(local).as_posix(): p for p in local.rglob("*")
             if p.is_file()}
    assert set(stored) == set(files) and len([k for k in files if "/data/" in k]) == 4
    for key, path in files.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == path.read_bytes()
    key = big_key(stored)
    assert key.startswith(f"archive/proj_s3/{job['id']}/data/") and stored[key] == BIG
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == emu.artifact_bytes(job["id"], "dir/big.bin")

    copies = {(c["path"], c["sink"]): c for c in job_report(job["id"])["copies"]}
    big = copies[("dir/big.bin", "vault")]
    assert big["provider_checksum"]["type"] == "COMPOSITE"
    assert big["stored"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert copies[("small.json", "vault")]["provider_checksum"]["type"] == "FULL_OBJECT"

    before = {k: s3.head_object(Bucket=bucket, Key=k)["LastModified"] for k in stored}
    again, _ = run(emu, tmp_path, moto_endpoint, bucket)
    assert again.exit_code == 0 and again.objects_written == 0, again.as_dict()
    assert {k: s3.head_object(Bucket=bucket, Key=k)["LastModified"] for k in stored} == before


def test_download_dropped_mid_upload_leaves_nothing_then_next_run_completes(
        plangrep_emulator, job, tmp_path, moto_endpoint, s3, bucket):
    emu = plangrep_emulator
    emu.faults.fault_paths = {"dir/big.bin"}
    emu.faults.drop_mid_body_n = 1  # the body stops half way: after the first 5 MiB part
    report, _ = run(emu, tmp_path, moto_endpoint, bucket, attempts=1)
    assert report.exit_code == 1 and job["id"] in report.incomplete, report.as_dict()
    assert [k for k in s3_objects(s3, bucket) if k.endswith("big.bin")] == []
    assert uploads(s3, bucket) == []  # the multipart upload was aborted

    report, _ = run(emu, tmp_path, moto_endpoint, bucket)
    assert report.exit_code == 0, report.as_dict()
    body = s3.get_object(Bucket=bucket, Key=big_key(s3_objects(s3, bucket)))["Body"].read()
    assert body == emu.artifact_bytes(job["id"], "dir/big.bin")
