"""Issue "At the terminal", part 3, with the S3 sink: ``-vvv`` shows botocore's debug lines
(SigV4 ``Authorization`` headers, session tokens, canonical requests among them), and no
credential value reaches the terminal; ``-vv`` shows none of botocore at all."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

from archiver.testing.emulator import ArtifactSpec

TOKEN = "FQoGZXIvYXdzEXAMPLESESSIONTOKENmarker77"


def _config(emu, tmp_path, endpoint, bucket):
    path = tmp_path / "archiver.yaml"
    path.write_text(textwrap.dedent(f"""\
        source:
          type: plangrep
          base_url: {emu.base_url}
          api_key: ${{PLANGREP_API_KEY}}
        sinks:
          - name: vault
            type: s3
            bucket: {bucket}
            endpoint_url: {endpoint}
            region: us-east-1
        state_dir: {tmp_path / 'state'}
        """))
    return path


def _run(cfg, emu, *flags):
    env = {**os.environ, "PLANGREP_API_KEY": emu.api_key, "AWS_SESSION_TOKEN": TOKEN}
    return subprocess.run([sys.executable, "-m", "archiver", "run", "-c", str(cfg), *flags],
                          capture_output=True, text=True, timeout=120, env=env)


def test_vvv_shows_botocore_debug_without_any_credential(plangrep_emulator, tmp_path,
                                                          moto_endpoint, bucket):
    emu = plangrep_emulator
    emu.add_project(project_id="proj_s", name="S")
    emu.add_job("proj_s", artifacts=[ArtifactSpec("a.bin", size=2000)])
    cfg = _config(emu, tmp_path, moto_endpoint, bucket)
    out = _run(cfg, emu, "-vvv")
    assert out.returncode == 0, out.stderr[-3000:]
    err = out.stderr
    assert "DEBUG botocore" in err                     # the libraries' debug is there
    assert "Authorization" in err and "[REDACTED]" in err  # ... and was redacted
    assert TOKEN not in err and emu.api_key not in err
    assert "testing" not in re.findall(r"Credential=(\w+)", err)  # the access key id
    assert not re.search(r"Signature=[0-9a-f]{16}", err)
    assert not re.search(r"['\"]Authorization['\"]: b?['\"](?!\[REDACTED\])", err)
    assert not re.search(r"(?im)^x-amz-security-token:(?!\s*\[REDACTED\])", err)


def test_vv_leaves_botocore_out(plangrep_emulator, tmp_path, moto_endpoint, bucket):
    emu = plangrep_emulator
    emu.add_project(project_id="proj_s", name="S")
    emu.add_job("proj_s", artifacts=[ArtifactSpec("a.bin", size=2000)])
    out = _run(_config(emu, tmp_path, moto_endpoint, bucket), emu, "-vv")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DEBUG botocore" not in out.stderr and "DEBUG urllib3" not in out.stderr
    assert "DEBUG archiver" in out.stderr
