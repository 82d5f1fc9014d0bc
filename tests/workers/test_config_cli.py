"""``workers:`` and ``lease:`` at the command line: bad values are a configuration error
(exit 2) naming the YAML path and line, before any I/O; ``--workers 0`` is a usage error.
(The validation rules themselves: tests/test_config_workers.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BASE = """\
source:
  type: plangrep
  base_url: http://127.0.0.1:9/api/open/v1
  api_key: k
sinks:
  - name: primary
    type: local
    root: {root}
state_dir: {state}
"""


def archiver(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archiver", *args], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "ARCHIVER_LOAD_ENTRY_POINTS": "0"})


@pytest.mark.parametrize("extra, where, problem", [
    ("workers: 0", "a.yaml:10: workers:", "greater than or equal to 1"),
    ("workers: -1", "a.yaml:10: workers:", "greater than or equal to 1"),
    ("workers: 2.5", "a.yaml:10: workers:", "must be a whole number, not 2.5"),
    ('workers: "two"', "a.yaml:10: workers:", "must be a whole number, not 'two'"),
    ("lease: {ttl: 10, heartbeat: 20}", "a.yaml:10: lease.heartbeat:",
     "must be shorter than lease.ttl (10s)"),
])
def test_config_check_refuses_bad_workers_and_leases(tmp_path, extra, where, problem):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(BASE.format(root=tmp_path / "never", state=tmp_path / "never-state")
                   + extra + "\n")
    out = archiver("config", "check", "-c", str(cfg))
    assert out.returncode == 2, out.stdout + out.stderr
    assert where in out.stderr and problem in out.stderr, out.stderr
    assert not (tmp_path / "never").exists() and not (tmp_path / "never-state").exists()


def test_workers_zero_on_the_command_line_is_a_usage_error(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(BASE.format(root=tmp_path / "never", state=tmp_path / "never-state"))
    out = archiver("run", "-c", str(cfg), "--workers", "0")
    assert out.returncode == 2
    assert "Invalid value for '--workers': 0 is not in the range 1<=x<=64" in out.stderr
    assert not (tmp_path / "never-state").exists()
