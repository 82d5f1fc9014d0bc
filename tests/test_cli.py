"""The command line, run as a real subprocess against the emulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archiver.testing.emulator import ArtifactSpec

from archiver.testing.configs import basic_config


def archiver(*args, env_key=None, cwd=None, timeout=120):
    env = {**os.environ}
    if env_key is not None:
        env["PLANGREP_API_KEY"] = env_key
    return subprocess.run([sys.executable, "-m", "archiver.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def test_help_lists_commands():
    out = archiver("--help")
    assert out.returncode == 0
    for cmd in ("run", "archive", "status", "plugins", "config", "emulator", "demo", "cleanup"):
        assert cmd in out.stdout


def test_run_twice_json_and_status(emu, tmp_path):
    emu.load_demo()
    cfg = tmp_path / "a.yaml"
    cfg.write_text(basic_config(emu, tmp_path))
    first = archiver("run", "-c", str(cfg), "--json", env_key=emu.api_key)
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["archived"] and data["exit_code"] == 0
    arts = emu.count(route="artifact")
    second = json.loads(archiver("run", "-c", str(cfg), "--json", env_key=emu.api_key).stdout)
    assert second["archived"] == [] and emu.count(route="artifact") == arts
    status = archiver("status", "-c", str(cfg), "--json", "--job", data["archived"][0],
                      env_key=emu.api_key)
    st = json.loads(status.stdout)
    assert st["jobs"]["archived"] == len(data["archived"])
    assert all(c["received"]["sha256"] and c["stored"]["sha256"] for c in st["job"]["copies"])


def test_archive_named_job(emu, tmp_path):
    emu.add_project(project_id="proj_t", name="T")
    a = emu.add_job("proj_t", artifacts=[ArtifactSpec(path="x.bin", size=10)])
    emu.add_job("proj_t", artifacts=[ArtifactSpec(path="y.bin", size=10)])
    cfg = tmp_path / "a.yaml"
    cfg.write_text(basic_config(emu, tmp_path))
    out = archiver("archive", "-c", str(cfg), "--json", a["id"], env_key=emu.api_key)
    assert json.loads(out.stdout)["archived"] == [a["id"]]


def test_config_check_does_no_io(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(f"""\
source:
  type: plangrep
  base_url: http://127.0.0.1:9/api/open/v1
  api_key: ${{PLANGREP_API_KEY}}
sinks:
  - name: primary
    type: local
    root: {tmp_path / 'never'}
state_dir: {tmp_path / 'never-state'}
""")
    out = archiver("config", "check", "-c", str(cfg), env_key="k")
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout
    assert not (tmp_path / "never").exists() and not (tmp_path / "never-state").exists()


def test_config_errors_exit_2_before_io(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("source: {type: plangrep, api_key: x}\nsinks:\n  - {name: a, type: nope}\n"
                   f"state_dir: {tmp_path / 'st'}\n")
    out = archiver("run", "-c", str(cfg))
    assert out.returncode == 2
    assert "sinks[0].type" in out.stderr and "unknown sink type 'nope'" in out.stderr
    assert not (tmp_path / "st").exists()


def test_missing_env_var_exit_2(tmp_path, emu):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(basic_config(emu, tmp_path))
    env = {k: v for k, v in os.environ.items() if k != "PLANGREP_API_KEY"}
    out = subprocess.run([sys.executable, "-m", "archiver.cli", "run", "-c", str(cfg)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "PLANGREP_API_KEY is not set" in out.stderr
    assert len(emu.requests) == 0


def test_wrong_key_exit_3_no_leak(emu, tmp_path):
    emu.load_demo()
    cfg = tmp_path / "a.yaml"
    cfg.write_text(basic_config(emu, tmp_path))
    out = archiver("-vv", "run", "-c", str(cfg), env_key="pk_live_SECRET_marker_42")
    assert out.returncode == 3
    assert "401" in out.stderr or "unauthorized" in out.stderr
    assert "SECRET_marker" not in out.stderr + out.stdout
    assert len(emu.requests) == 1


def test_plugins_command():
    out = archiver("plugins", "--json")
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert "sink:local" in rows["local"]["components"]
    assert rows["plangrep"]["builtin"] and rows["plangrep"]["version"]
    assert "archiver_register_sources" in rows["plangrep"]["hooks"]


def _partials(root: Path):
    return [p for p in root.rglob("*.partial")] if root.exists() else []


def _unnamed_sizes(pid: int, root: Path) -> list[int]:
    """Sizes of the unnamed (O_TMPFILE) files below ``root`` that process ``pid`` has open:
    /proc shows them as ``<dir>/#<inode> (deleted)``."""
    sizes = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith(str(root)) and target.endswith(" (deleted)"):
                sizes.append(os.stat(f"/proc/{pid}/fd/{fd}").st_size)
        except OSError:
            continue  # closed meanwhile
    return sizes


@pytest.mark.parametrize("temp_files", ["named", "auto"])
def test_sigkill_mid_transfer_then_rerun_completes(emu, tmp_path, temp_files):
    if temp_files == "auto" and not getattr(os, "O_TMPFILE", 0):
        pytest.skip("unnamed temporary files need Linux O_TMPFILE")
    emu.add_project(project_id="proj_t", name="T")
    job = emu.add_job("proj_t", artifacts=[ArtifactSpec(path="big.bin", size=64 << 20),
                                           ArtifactSpec(path="small.json", size=100)])
    emu.faults.slow_body = 0.02
    cfg = tmp_path / "a.yaml"
    cfg.write_text(basic_config(emu, tmp_path, temp_files=temp_files))
    env = {**os.environ, "PLANGREP_API_KEY": emu.api_key}
    proc = subprocess.Popen([sys.executable, "-m", "archiver.cli", "run", "-c", str(cfg)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = tmp_path / "archive"
    deadline = time.monotonic() + 60

    def in_flight() -> list[int]:
        if temp_files == "named":
            return [p.stat().st_size for p in _partials(root)]
        return _unnamed_sizes(proc.pid, root)
    while not any(size > 1 << 20 for size in in_flight()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # named: the kill really left a temporary file; unnamed: it left nothing at all
    assert bool(_partials(root)) is (temp_files == "named")
    assert not (root / "proj_t" / job["id"] / "data" / "artifacts" / "big.bin").exists()
    emu.faults.slow_body = 0.0
    out = archiver("run", "-c", str(cfg), "--json", env_key=emu.api_key)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["archived"] == [job["id"]]
    assert not _partials(root)
    big = root / "proj_t" / job["id"] / "data" / "artifacts" / "big.bin"
    import hashlib
    want = hashlib.sha256()
    for chunk in emu.iter_artifact_bytes(job["id"], "big.bin"):
        want.update(chunk)
    assert hashlib.sha256(big.read_bytes()).hexdigest() == want.hexdigest()


def test_sigterm_aborts_cleanly(emu, tmp_path):
    emu.add_project(project_id="proj_t", name="T")
    emu.add_job("proj_t", artifacts=[ArtifactSpec(path="big.bin", size=64 << 20)])
    emu.faults.slow_body = 0.02
    cfg = tmp_path / "a.yaml"
    cfg.write_text(basic_config(emu, tmp_path))
    env = {**os.environ, "PLANGREP_API_KEY": emu.api_key}
    proc = subprocess.Popen([sys.executable, "-m", "archiver.cli", "run", "-c", str(cfg)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = tmp_path / "archive"
    deadline = time.monotonic() + 60
    # mid-transfer: a named temporary file, or an unnamed one the process holds open
    while not (_partials(root) or _unnamed_sizes(proc.pid, root)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert not _partials(root)
    assert "nothing partial" in err


def test_plugin_commands_join_the_cli():
    """archiver_register_commands: a plugin's command is callable from the real group."""
    import click
    from click.testing import CliRunner

    from archiver.cli import cli as real_cli
    from archiver.hookspecs import hookimpl
    from archiver.plugins import build_plugin_manager

    class Hello:
        @hookimpl
        def archiver_register_commands(self, cli):
            @cli.command("hello-test")
            def hello():
                click.echo("hello from a plugin")

    group = click.Group(commands=dict(real_cli.commands))
    build_plugin_manager(extra=[("hello", Hello())]).hook.archiver_register_commands(cli=group)
    out = CliRunner().invoke(group, ["hello-test"])
    assert out.exit_code == 0 and out.output == "hello from a plugin\n"
    assert "hello-test" not in real_cli.commands


def test_status_needs_no_secret(emu, tmp_path):
    emu.load_demo()
    cfg = tmp_path / "a.yaml"
    cfg.write_text(basic_config(emu, tmp_path))
    assert archiver("run", "-c", str(cfg), env_key=emu.api_key).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "PLANGREP_API_KEY"}
    out = subprocess.run([sys.executable, "-m", "archiver.cli", "status", "-c", str(cfg)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "jobs: archived 3," in out.stdout and "sink primary: 19 objects" in out.stdout


def test_help_lists_builtin_plugin_commands_without_loading_them():
    import click

    from archiver.cli import BUILTIN_PLUGIN_COMMANDS
    from archiver.plugins import build_plugin_manager

    group = click.Group()
    build_plugin_manager(entry_points=False).hook.archiver_register_commands(cli=group)
    assert set(group.commands) == set(BUILTIN_PLUGIN_COMMANDS)
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "archiver.cli", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in BUILTIN_PLUGIN_COMMANDS:
        assert f"  {name} " in out.stdout
    imported = out.stderr
    assert "pydantic" not in imported and "requests" not in imported


def test_demo_command_archives_and_verifies(tmp_path):
    """`archiver demo` as README shows it: exit 0, every artifact checked, status reads it."""
    out = archiver("demo", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "all match" in out.stdout and "archived 3 job(s)" in out.stdout
    status = archiver("status", "-c", str(tmp_path / "archiver-demo.yaml"), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["jobs"]["archived"] == 3
