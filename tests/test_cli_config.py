"""``archiver config check`` (issue "At the terminal", part 4 and the bad inputs): the file
alone; ``--online``: the API key tried once, every sink's preflight, every failure in one
go, ``--json``; and every broken file a one-line exit 2 within a second or two and in
bounded memory, run as users run it."""

from __future__ import annotations

import json
import os
import resource
import time

import pytest
from cli_helpers import archiver, write_config

from archiver.testing.emulator import Emulator


def test_online_check_tries_the_key_once_and_every_sink(emu, tmp_path):
    cfg = write_config(emu, tmp_path)
    out = archiver("config", "check", "-c", cfg, "--online", key=emu.api_key)
    assert out.returncode == 0, out.stderr
    assert f"ok      source plangrep: API key accepted at {emu.base_url}" in out.stdout
    assert "ok      sink primary (local): preflight passed" in out.stdout
    assert emu.count(route="projects") == 1 and len(emu.requests) == 1


def test_online_check_reports_every_failure_in_one_go(emu, tmp_path):
    extra = (f"  - name: broken\n    type: local\n    root: {tmp_path / 'f' / 'x'}\n"
             f"  - name: fine\n    type: local\n    root: {tmp_path / 'fine'}\n")
    (tmp_path / "f").write_text("a file, not a directory")
    cfg = write_config(emu, tmp_path, extra_sink=extra)
    out = archiver("config", "check", "-c", cfg, "--online", key="pk_wrong_key_123")
    assert out.returncode == 3
    assert "FAILED  source plangrep: the API key was refused: " in out.stderr
    assert "HTTP 401" in out.stderr
    assert "FAILED  sink broken (local): sink 'broken': root" in out.stderr
    assert "ok      sink fine (local)" in out.stdout and "ok      sink primary" in out.stdout
    assert out.stderr.strip().endswith("error: 2 of 4 online check(s) failed")
    assert "pk_wrong_key_123" not in out.stdout + out.stderr
    doc = json.loads(archiver("config", "check", "-c", cfg, "--online", "--json",
                              key="pk_wrong_key_123").stdout)
    assert doc["ok"] is False and doc["exit_code"] == 3
    assert [(c["kind"], c["name"], c["ok"]) for c in doc["checks"]] == [
        ("source", "plangrep", False), ("sink", "primary", True), ("sink", "broken", False),
        ("sink", "fine", True)]


def test_online_check_names_an_unreachable_host(tmp_path):
    with Emulator() as emu:
        cfg = write_config(emu, tmp_path)
    out = archiver("config", "check", "-c", cfg, "--online", key="k")  # emulator stopped
    assert out.returncode == 3
    assert "FAILED  source plangrep: cannot reach the API: " in out.stderr
    assert "connection error" in out.stderr


def test_online_check_names_a_wrong_base_url(emu, tmp_path):
    cfg = write_config(emu, tmp_path)
    cfg.write_text(cfg.read_text().replace(emu.base_url, emu.base_url.replace(
        "/api/open/v1", "/api/v2")))
    out = archiver("config", "check", "-c", cfg, "--online", key=emu.api_key)
    assert out.returncode == 3
    assert "HTTP 404" in out.stderr and "is source.base_url right?" in out.stderr


def test_offline_check_json(emu, tmp_path):
    cfg = write_config(emu, tmp_path)
    doc = json.loads(archiver("config", "check", "-c", cfg, "--json", key="k").stdout)
    assert doc["ok"] and doc["checks"] == [] and doc["sinks"] == [{"name": "primary",
                                                                  "type": "local"}]
    assert len(emu.requests) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("sinks: []\n")
    out = archiver("config", "check", "-c", bad, "--json")
    assert out.returncode == 2 and json.loads(out.stdout)["ok"] is False


# --------------------------------------------------------------------------- bad inputs

VALID = "source:\n  type: plangrep\n  api_key: x\nsinks:\n  - {name: a, type: local, root: ./a}\n"


def _bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]"
              for p, c in zip("abcdefgh", "bcdefghi")]
    return "\n".join(lines) + "\n"


def _unreadable(tmp_path):
    """A file this process cannot read: by its mode, or (root ignores modes) a file whose
    read fails in the kernel."""
    if os.geteuid() == 0:
        return "/proc/self/mem", "cannot read configuration: Input/output error"
    path = tmp_path / "secret.yaml"
    path.write_text(VALID)
    path.chmod(0)
    return str(path), "cannot read configuration: Permission denied"


CASES = {
    "missing": (lambda p: str(p / "nope.yaml"), "cannot read configuration: No such file"),
    "a directory": (lambda p: str(p), "cannot read configuration: Is a directory"),
    "not UTF-8": (lambda p: _write(p, "latin1.yaml", VALID.replace("a}", "\xe4}").encode(
        "latin-1")), "not UTF-8 text"),
    "empty": (lambda p: _write(p, "empty.yaml", b""), "empty"),
    "a list": (lambda p: _write(p, "list.yaml", b"- a\n- b\n"), "not a list"),
    "10 MB": (lambda p: _write(p, "big.yaml", (VALID + "# pad\n" * (2 << 20)).encode()),
              "larger than 1 MiB"),
    "an alias bomb": (lambda p: _write(p, "bomb.yaml", _bomb().encode()),
                      "more than 10000 YAML nodes"),
    "/dev/zero": (lambda p: "/dev/zero", "larger than 1 MiB"),
}


def _write(tmp_path, name, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _limited():  # bounded memory: a loader that built the bomb would die, not exit 2
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("case", [*CASES, "unreadable"])
def test_a_broken_file_is_one_line_exit_2_fast_and_small(tmp_path, case):
    if case == "unreadable":
        path, message = _unreadable(tmp_path)
    else:
        make, message = CASES[case]
        path = make(tmp_path)
    started = time.monotonic()
    out = archiver("config", "check", "-c", path, timeout=30, preexec_fn=_limited)
    took = time.monotonic() - started
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert message.lower() in lines[0].lower()
    assert out.stdout == ""
    assert took < 2.5, f"{case}: {took:.1f}s"
