"""End to end: the Plangrep emulator -> archiver's pipeline -> local and s3 sinks (moto)."""

from __future__ import annotations

import hashlib
import textwrap
from datetime import timedelta, timezone

import pytest
from s3_testing import MiB, uploads

from archiver.config import load_config
from archiver.ledger import open_ledger
from archiver import api
from archiver.runtime import Runtime
from archiver.plugins import build_plugin_manager
from archiver.testing.emulator import ArtifactSpec

BIG = 12 * MiB


def config_text(emu, tmp_path, endpoint: str, bucket: str, attempts: int,
                vault_options: str = "") -> str:
    vault = "".join(f"            {line}\n" for line in vault_options.splitlines())
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
{vault}        state_dir: {tmp_path / 'state'}
        concurrency: 2
        artifact_attempts: {attempts}
        """)


def run(emu, tmp_path, endpoint, bucket, attempts=4, vault_options=""):
    plugins = build_plugin_manager(entry_points=True)
    loaded = load_config("archiver.yaml", plugins.registry,
                         text=config_text(emu, tmp_path, endpoint, bucket, attempts,
                                          vault_options),
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


# ---------------------------------------------------------------------- read-back, faults
LOCK = "object_lock: {mode: GOVERNANCE, retain_days: 2}"


def copies_of(job_report, job_id) -> dict[tuple[str, str], dict]:
    return {(c["path"], c["sink"]): c for c in job_report(job_id)["copies"]}


def test_head_cut_fails_only_the_s3_copy_and_the_next_run_completes(
        plangrep_emulator, job, tmp_path, moto_endpoint, s3, bucket):
    """HeadObject's headers cut after the status line (a "successful" HEAD without
    ContentLength): the S3 copy is a retryable sink error, not an internal error, and
    the local copies of the same objects are recorded all the same."""
    from archiver.testing.faultproxy import Fault, FaultProxy

    emu = plangrep_emulator
    with FaultProxy(moto_endpoint) as proxy:
        proxy.once(lambda r: r.method == "HEAD" and r.path.endswith("/big.bin"),
                   Fault(close_after=17))
        report, job_report = run(emu, tmp_path, proxy.url, bucket, attempts=1)
        assert len(proxy.applied) == 1
    assert report.exit_code == 1 and job["id"] in report.incomplete, report.as_dict()
    problems = " ".join(report.incomplete[job["id"]])
    assert "internal error" not in problems
    assert "sink vault" in problems and "big.bin" in problems and "ContentLength" in problems
    copies = copies_of(job_report, job["id"])
    assert ("dir/big.bin", "primary") in copies and ("small.json", "vault") in copies
    assert ("dir/big.bin", "vault") not in copies

    report, job_report = run(emu, tmp_path, moto_endpoint, bucket)
    assert report.exit_code == 0, report.as_dict()
    assert copies_of(job_report, job["id"])[("dir/big.bin", "vault")]["verified"]


def test_lock_the_provider_drops_leaves_the_job_incomplete_then_applies_it(
        plangrep_emulator, job, tmp_path, moto_endpoint, s3, new_bucket):
    """moto ignores Object Lock on CreateMultipartUpload, and here PutObjectRetention is
    acknowledged without reaching it: the big artifact's copy is not verified and the job
    stays incomplete, naming sink, key, wanted and found. The next run applies the lock
    and records what S3 confirmed in the copy row and the audit chain."""
    import json

    from archiver.testing.faultproxy import Fault, FaultProxy

    emu = plangrep_emulator
    locked = new_bucket(lock=True)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    with FaultProxy(moto_endpoint) as proxy:
        proxy.rule = lambda r: Fault(respond=ok) if (
            r.method == "PUT" and "retention" in r.query) else None
        report, job_report = run(emu, tmp_path, proxy.url, locked, attempts=1,
                                 vault_options=LOCK)
        assert proxy.applied, "PutObjectRetention was never sent"
    assert report.exit_code == 1 and job["id"] in report.incomplete, report.as_dict()
    problems = " ".join(report.incomplete[job["id"]])
    assert "sink vault" in problems and "big.bin" in problems
    assert "wanted mode GOVERNANCE until" in problems and "S3 holds no Object Lock" in problems
    assert ("dir/big.bin", "vault") not in copies_of(job_report, job["id"])

    report, job_report = run(emu, tmp_path, moto_endpoint, locked, vault_options=LOCK)
    assert report.exit_code == 0, report.as_dict()
    key = big_key(s3_objects(s3, locked))
    head = s3.head_object(Bucket=locked, Key=key)
    assert head["ObjectLockMode"] == "GOVERNANCE"
    ledger = open_ledger(tmp_path / "state")
    try:
        records = [json.loads(r.line) for r in ledger.audit_rows(job["id"])]
    finally:
        ledger.close()
    retention = [r["data"] for r in records
                 if r["kind"] == "retention" and r["path"] == "dir/big.bin"]
    assert retention and retention[-1]["object_lock_mode"] == "GOVERNANCE"
    assert retention[-1]["object_lock_retain_until"] == \
        head["ObjectLockRetainUntilDate"].astimezone(timezone.utc).isoformat()


def test_verify_reports_retention_shortened_weakened_or_removed(
        plangrep_emulator, job, tmp_path, moto_endpoint, s3, new_bucket):
    """moto lets a COMPLIANCE retention be shortened, weakened to GOVERNANCE or removed
    (real S3 refuses; GOVERNANCE allows it with BypassGovernanceRetention), and a legal
    hold be released: ``archiver verify`` names each such object and exits 1."""
    import json

    from click.testing import CliRunner

    from archiver.cli import cli

    emu = plangrep_emulator
    locked = new_bucket(lock=True)
    lock = "object_lock: {mode: COMPLIANCE, retain_days: 2, legal_hold: true}"
    report, _ = run(emu, tmp_path, moto_endpoint, locked, vault_options=lock)
    assert report.exit_code == 0, report.as_dict()
    config = tmp_path / "archiver.yaml"
    config.write_text(config_text(emu, tmp_path, moto_endpoint, locked, 4, lock))

    def verify():
        result = CliRunner().invoke(cli, ["verify", "--json", "-c", str(config)],
                                    env={"PLANGREP_API_KEY": None})
        return result.exit_code, json.loads(result.stdout)

    code, out = verify()
    assert code == 0 and out["findings"] == [], out

    stored = s3_objects(s3, locked)

    def key(suffix: str) -> str:
        (found,) = [k for k in stored if k.endswith(suffix)]
        return found

    big, small, job_json, result_json = (key("/big.bin"), key("/small.json"),
                                         key("/job.json"), key("/result.json"))
    until = s3.head_object(Bucket=locked, Key=big)["ObjectLockRetainUntilDate"]
    s3.put_object_retention(Bucket=locked, Key=big, Retention={
        "Mode": "COMPLIANCE", "RetainUntilDate": until - timedelta(days=1)})
    s3.put_object_retention(Bucket=locked, Key=small, Retention={})
    s3.put_object_retention(Bucket=locked, Key=job_json, Retention={
        "Mode": "GOVERNANCE", "RetainUntilDate": until + timedelta(days=1)})
    s3.put_object_legal_hold(Bucket=locked, Key=result_json, LegalHold={"Status": "OFF"})
    code, out = verify()
    assert code == 1, out
    found = {f["where"]: f for f in out["findings"]}
    url = f"s3://{locked}/"
    assert set(found) == {url + big, url + small, url + job_json, url + result_json}, out
    assert {f["kind"] for f in found.values()} == {"retention"}
    assert {f["sink"] for f in found.values()} == {"vault"}
    assert "retention shortened" in found[url + big]["detail"]
    assert "retention missing" in found[url + small]["detail"]
    assert "retention mode GOVERNANCE, wanted COMPLIANCE" in found[url + job_json]["detail"]
    assert "legal hold removed" in found[url + result_json]["detail"]
    assert "recorded when it was stored" in found[url + big]["detail"]
