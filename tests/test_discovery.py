"""Which configuration a command uses without ``-c`` (issue "At the terminal", part 5):
``$ARCHIVER_CONFIG``, then ``./archiver.yaml``, then
``$XDG_CONFIG_HOME/archiver/archiver.yaml``; ``-v`` says which."""

from __future__ import annotations

import pytest
from cli_helpers import archiver, write_config

from archiver.discovery import NoConfig, find_config


def test_the_order(tmp_path):
    here, xdg = tmp_path / "here", tmp_path / "xdg"
    (xdg / "archiver").mkdir(parents=True)
    here.mkdir()
    env = {"XDG_CONFIG_HOME": str(xdg)}
    with pytest.raises(NoConfig) as exc:
        find_config(env=env, cwd=here)
    assert str(exc.value) == ("no configuration file: give -c FILE, set ARCHIVER_CONFIG, or "
                              f"create one of ./archiver.yaml, {xdg}/archiver/archiver.yaml")
    (xdg / "archiver" / "archiver.yaml").write_text("x")
    assert find_config(env=env, cwd=here) == (str(xdg / "archiver" / "archiver.yaml"),
                                               f"found {xdg}/archiver/archiver.yaml")
    (here / "archiver.yaml").write_text("x")
    assert find_config(env=env, cwd=here)[0] == str(here / "archiver.yaml")
    env["ARCHIVER_CONFIG"] = "/elsewhere.yaml"  # given: used even if missing (the loader says so)
    assert find_config(env=env, cwd=here) == ("/elsewhere.yaml", "$ARCHIVER_CONFIG")
    assert find_config("mine.yaml", env=env, cwd=here) == ("mine.yaml", "-c")


def test_xdg_defaults_to_dot_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".config" / "archiver").mkdir(parents=True)
    (tmp_path / ".config" / "archiver" / "archiver.yaml").write_text("x")
    assert find_config(env={}, cwd=tmp_path / ".config")[0] == str(
        tmp_path / ".config" / "archiver" / "archiver.yaml")


def test_commands_find_the_file_and_say_which_with_v(emu, tmp_path):
    emu.load_demo()
    cfg = write_config(emu, tmp_path)
    out = archiver("run", "-v", key=emu.api_key, cwd=tmp_path,
                   env={"XDG_CONFIG_HOME": str(tmp_path / "none")})
    assert out.returncode == 0, out.stderr
    assert "configuration: archiver.yaml (found ./archiver.yaml)" in out.stderr
    other = tmp_path / "elsewhere"
    other.mkdir()
    via_env = archiver("-v", "status", cwd=other, env={"ARCHIVER_CONFIG": str(cfg)})
    assert via_env.returncode == 0, via_env.stderr
    assert f"configuration: {cfg} ($ARCHIVER_CONFIG)" in via_env.stderr
    assert "jobs: archived 3" in via_env.stdout
    xdg = tmp_path / "xdg"
    (xdg / "archiver").mkdir(parents=True)
    (xdg / "archiver" / "archiver.yaml").write_text(cfg.read_text())
    via_xdg = archiver("status", "-v", cwd=other, env={"XDG_CONFIG_HOME": str(xdg)})
    assert via_xdg.returncode == 0, via_xdg.stderr
    assert f"found {xdg}/archiver/archiver.yaml" in via_xdg.stderr
    quiet = archiver("status", cwd=other, env={"XDG_CONFIG_HOME": str(xdg)})
    assert "configuration:" not in quiet.stderr  # only with -v


def test_no_configuration_anywhere_is_one_line_exit_2(tmp_path):
    out = archiver("run", cwd=tmp_path, env={"XDG_CONFIG_HOME": str(tmp_path / "x")})
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: no configuration file: give -c FILE, set "
                                  "ARCHIVER_CONFIG, or create one of ./archiver.yaml, "
                                  f"{tmp_path / 'x'}/archiver/archiver.yaml")
