"""Honest outcomes of ``run`` and ``archive`` (issue "At the terminal", parts 2 and 6):
counts that say what they count, one job's unknown id not ending the others, one clear
line and a documented exit code for every failure to start."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from cli_helpers import archiver, write_config

from archiver.testing.emulator import ArtifactSpec


def mixed(emu):
    """3 jobs with artifacts, 3 failed jobs (nothing to store)."""
    emu.add_project(project_id="proj_m", name="M")
    for i in range(3):
        emu.add_job("proj_m", job_id=f"job_ok{i}")
    for i in range(3):
        emu.add_job("proj_m", job_id=f"job_fail{i}", status="failed", artifacts=[])


def test_a_rerun_says_what_was_already_done(emu, tmp_path):
    mixed(emu)
    cfg = write_config(emu, tmp_path)
    first = archiver("run", "-c", cfg, key=emu.api_key)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("archived 3 job(s): 12 object(s) written, 20.9 KiB "
                                   "received in ")
    assert first.stdout.rstrip().endswith("; 3 with nothing to store")
    again = archiver("run", "-c", cfg, key=emu.api_key)
    assert "6 already archived" not in again.stdout
    assert again.stdout.rstrip().endswith(
        "already settled: 3 archived, 3 with nothing to store"), again.stdout
    data = json.loads(archiver("run", "-c", cfg, "--json", key=emu.api_key).stdout)
    assert data["skipped"] == 6 and data["skipped_already_archived"] == 3
    assert data["already_settled"] == {"archived": 3, "nothing_to_store": 3}
    assert data["elapsed_seconds"] > 0


def test_an_unknown_job_id_does_not_stop_the_others(emu, tmp_path):
    mixed(emu)
    cfg = write_config(emu, tmp_path)
    out = archiver("archive", "-c", cfg, "job_nope", "job_ok1", key=emu.api_key)
    assert out.returncode == 5, out.stderr
    assert out.stdout.startswith("archived 1 job(s)") and "1 unknown to the API" in out.stdout
    assert "UNKNOWN job_nope: job job_nope failed: HTTP 404" in out.stderr
    status = json.loads(archiver("status", "-c", cfg, "--json").stdout)
    assert status["jobs"] == {"archived": 1}
    data = json.loads(archiver("archive", "-c", cfg, "--json", "job_ok2", "job_nope",
                               key=emu.api_key).stdout)
    assert data["archived"] == ["job_ok2"] and list(data["unknown"]) == ["job_nope"]
    assert data["exit_code"] == 5


def test_an_expired_job_id_is_that_jobs_outcome(emu, tmp_path):
    mixed(emu)
    emu.expire("job_ok0")
    cfg = write_config(emu, tmp_path)
    out = archiver("archive", "-c", cfg, "job_ok0", "job_ok1", key=emu.api_key)
    assert out.returncode == 4, out.stderr
    assert "LOST job_ok0: job job_ok0 expired before it was archived" in out.stderr
    assert out.stdout.startswith("archived 1 job(s)")


def test_an_artifact_error_names_the_object_once(emu, tmp_path):
    emu.add_project(project_id="proj_l", name="L")
    emu.add_job("proj_l", job_id="job_l4", artifacts=[ArtifactSpec("w.bin", size=200_000)])
    emu.faults.drop_mid_body_n = 100
    cfg = write_config(emu, tmp_path)
    out = archiver("run", "-c", cfg, key=emu.api_key)
    assert out.returncode == 1
    assert "job job_l4 artifact 'w.bin': job job_l4" not in out.stderr
    assert "INCOMPLETE job_l4:\n  w.bin: connection failed after 100000 of 200000 bytes" \
        in out.stderr
    assert out.stderr.count("restarting in") == 3
    warning = next(line for line in out.stderr.splitlines() if "restarting in" in line)
    assert warning.count("w.bin") == 1


def _one_line(out) -> str:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def test_an_unusable_state_dir_is_one_line_and_exit_2(emu, tmp_path):
    emu.load_demo()
    (tmp_path / "a-file").write_text("not a directory")
    cfg = write_config(emu, tmp_path, top="")
    cfg.write_text(cfg.read_text().replace(f"state_dir: {tmp_path / 'state'}",
                                           f"state_dir: {tmp_path / 'a-file' / 'state'}"))
    out = archiver("run", "-c", cfg, key=emu.api_key)
    assert out.returncode == 2
    assert _one_line(out) == (f"error: cannot open the ledger in state_dir "
                              f"{tmp_path / 'a-file' / 'state'}: Not a directory: "
                              f"{tmp_path / 'a-file' / 'state'}")
    assert emu.count() == 0


@pytest.mark.timeout(60)
def test_a_locked_ledger_is_one_line_and_exit_2(emu, tmp_path):
    emu.load_demo()
    cfg = write_config(emu, tmp_path)
    assert archiver("run", "-c", cfg, key=emu.api_key).returncode == 0
    holder = sqlite3.connect(tmp_path / "state" / "ledger.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    # the 30 s busy timeout made short, so that the test does not wait it out
    code = ("import sqlite3, sys\nreal = sqlite3.connect\n"
            "sqlite3.connect = lambda *a, **k: real(*a, **{**k, 'timeout': 0.2})\n"
            "from archiver.cli import main\nmain(sys.argv[1:])\n")
    try:
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-c", code, "run", "-c", str(cfg)],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PLANGREP_API_KEY": emu.api_key})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert out.returncode == 2
    assert _one_line(out).startswith("error: the ledger is locked: another process has held "
                                     "its write lock")
    assert time.monotonic() - started < 20


def test_a_bug_is_one_line_and_exit_70(capsys):
    import click

    from archiver import cli as cli_module

    @cli_module.cli.command("boom-test")
    def boom():
        raise ValueError("something broke")

    try:
        for argv, traceback in ((["boom-test"], False), (["-vv", "boom-test"], True)):
            with pytest.raises(SystemExit) as exc:
                cli_module.main(argv)
            assert exc.value.code == 70
            err = capsys.readouterr().err
            assert err.strip().splitlines()[-1] == (
                "error: internal error: ValueError: something broke (a bug; -vv shows the "
                "traceback)")
            assert ("Traceback" in err) == traceback
    finally:
        cli_module.cli.commands.pop("boom-test")
    assert isinstance(boom, click.Command)


def test_usage_errors_exit_2(tmp_path):
    out = archiver("run", "--workers", "0", "-c", tmp_path / "x.yaml")
    assert out.returncode == 2 and "--workers" in out.stderr
