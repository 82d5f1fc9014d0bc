"""End to end: the Plangrep emulator -> one archiver run -> local, S3 (moto) and Azure
(Azurite) sinks, through the public Python API (``archiver.api``) and the CLI.

Bad input on the Azure side (a blob name over Azure's limits, different bytes already at
a key, the service dropping connections mid-upload) fails that copy with an error naming
the sink, leaves nothing partial in the container, and archiving goes on: the other
artifacts and the other sinks are stored, and a later run finishes the job.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from azure_proxy import Proxy
from azure_helpers import MiB, uncommitted

from archiver import api
from archiver.testing.emulator import ArtifactSpec

LONG = "/".join(["d"] * 300) + "/deep.json"  # 301 path segments: Azure allows 254


@pytest.fixture(scope="module")
def moto_url():
    from archiver.testing.servers import moto_server
    with pytest.MonkeyPatch.context() as mp:
        for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY",
                           "testing"), ("AWS_DEFAULT_REGION", "us-east-1"),
                           ("AWS_EC2_METADATA_DISABLED", "true"), ("AWS_MAX_ATTEMPTS", "1")):
            mp.setenv(var, value)
        with moto_server() as url:
            import boto3
            boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(
                Bucket="vault-s3")
            yield url


def write_config(tmp_path: Path, emu, moto_url: str, account_url: str, container: str,
                 account: str, key: str) -> Path:
    path = tmp_path / "archiver.yaml"
    path.write_text(textwrap.dedent(f"""\
        source:
          type: plangrep
          base_url: {emu.base_url}
          api_key: ${{PLANGREP_API_KEY}}
          backoff_base: 0.01
        sinks:
          - name: primary
            type: local
            root: {tmp_path / 'archive'}
          - name: vault-s3
            type: s3
            bucket: vault-s3
            prefix: run-{container}
            endpoint_url: {moto_url}
            region: us-east-1
          - name: vault-az
            type: azure
            account_url: {account_url}
            account_name: {account}
            account_key: ${{AZ_KEY}}
            container: {container}
            prefix: archive
            block_size: 1MiB
            max_blocks_in_flight: 2
            retries: 0
            timeout: 5
        state_dir: {tmp_path / 'state'}
        concurrency: 2
        """))
    return path


def run_once(config: Path, monkeypatch, emu, key: str):
    monkeypatch.setenv("PLANGREP_API_KEY", emu.api_key)
    monkeypatch.setenv("AZ_KEY", key)
    with api.open_config(str(config)) as rt:
        report = api.run(rt)
        jobs = api.jobs(rt)
    return report, jobs


def test_one_run_beside_local_and_s3_with_bad_input(plangrep_emulator, azurite, service,
                                                    container, moto_url, tmp_path,
                                                    monkeypatch):
    emu = plangrep_emulator
    emu.add_project(project_id="proj_az", name="Azure")
    job = emu.add_job("proj_az", artifacts=[
        ArtifactSpec(path="small.json", size=3000), ArtifactSpec(path="big.bin", size=3 * MiB),
        ArtifactSpec(path="clash.json", size=500), ArtifactSpec(path=LONG, size=100)])
    clash = f"archive/proj_az/{job['id']}/data/artifacts/clash.json"
    service.get_container_client(container).upload_blob(clash, b"other bytes")
    dropped = []

    def drop_big(seen):  # the service goes away in the middle of big.bin's blocks
        if seen.comp == "block" and seen.path.endswith("big.bin") and len(dropped) < 99:
            dropped.append(seen)
            return "drop" if len(dropped) > 1 else None
        return None
    proxy = Proxy(azurite.port, fault=drop_big).start()
    try:
        config = write_config(tmp_path, emu, moto_url, proxy.account_url(azurite.account),
                              container, azurite.account, azurite.key)
        report, _ = run_once(config, monkeypatch, emu, azurite.key)
        assert report.incomplete and not report.fatal, report.as_dict()
        names = set(service.get_container_client(container).list_blob_names())
        assert any(n.endswith("small.json") for n in names)
        assert not any(n.endswith("big.bin") or n.endswith("deep.json") for n in names)
        assert uncommitted(service, container) == [], "nothing staged may be left behind"
        local = {p.name for p in (tmp_path / "archive").rglob("*") if p.is_file()}
        assert {"small.json", "big.bin", "clash.json", "deep.json"} <= local
        errors = json.dumps(api_status(config, monkeypatch, emu, azurite.key))
        assert "vault-az" in errors and "over Azure's limits" in errors
        assert "already holds different bytes" in errors
        assert azurite.key not in errors

        # Next run: the service is back; big.bin is stored, the others still fail.
        proxy.fault = None
        report, _ = run_once(config, monkeypatch, emu, azurite.key)
        names = set(service.get_container_client(container).list_blob_names())
        assert any(n.endswith("big.bin") for n in names)
        assert uncommitted(service, container) == []
    finally:
        proxy.stop()


def api_status(config: Path, monkeypatch, emu, key: str) -> dict:
    monkeypatch.setenv("PLANGREP_API_KEY", emu.api_key)
    monkeypatch.setenv("AZ_KEY", key)
    with api.open_config(str(config)) as rt:
        return api.status(rt)


def test_a_refused_key_stops_the_run_before_any_download(plangrep_emulator, azurite,
                                                         container, moto_url, tmp_path,
                                                         monkeypatch):
    emu = plangrep_emulator
    emu.add_project(project_id="proj_key", name="Key")
    emu.add_job("proj_key")
    wrong = "V3JvbmdLZXk" + "x" * 77 + "=="
    config = write_config(tmp_path, emu, moto_url, azurite.account_url, container,
                          azurite.account, wrong)
    report, _ = run_once(config, monkeypatch, emu, wrong)
    assert report.exit_code == 3 and "vault-az" in report.fatal
    assert "credentials were refused" in report.fatal and wrong not in report.fatal
    assert not (tmp_path / "archive").exists() or not any((tmp_path / "archive").rglob("*.json"))


def test_archiver_plugins_lists_azure():
    out = subprocess.run([str(Path(sys.executable).parent / "archiver"), "plugins"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "sink:azure" in out.stdout
