"""Without a server the tests skip and say how to run them; under CI=true they fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_one(ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["ARCHIVER_TEST_POSTGRES_URL"] = "postgresql://postgres@127.0.0.1:1/test"
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:randomly",
         str(HERE / "test_postgres_schema.py"), "-k", "an_empty_database"],
        capture_output=True, text=True, env=env, cwd=HERE.parent, timeout=120)


def test_no_server_skips_with_how_to_run_them():
    out = run_one(None)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 skipped" in out.stdout
    assert "start PostgreSQL on 127.0.0.1:5432 or set ARCHIVER_TEST_POSTGRES_URL" in out.stdout


def test_no_server_under_ci_is_a_failure():
    out = run_one("true")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "CI=true: PostgreSQL is not reachable" in out.stdout
    assert "skipped" not in out.stdout
