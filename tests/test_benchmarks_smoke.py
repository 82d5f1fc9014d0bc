"""The benchmark runner in --smoke mode: every scenario executes end to end on minimal
sizes (real processes and servers on 127.0.0.1) and reports rows. No timing assertion:
numbers at these sizes mean nothing; this only proves the scenarios still run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["large", "fanout", "small", "rerun", "decompress", "startup"]

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("curl", "zstd", "gzip", "sha256sum", "timeout",
                                      "/usr/bin/time")),
    reason="the baselines need curl, gzip, zstd, sha256sum, timeout and GNU time")


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_runs_in_smoke_mode(name: str, tmp_path: Path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--only", name, "--no-chart",
         "--output", str(out), "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    [scenario] = data["scenarios"]
    assert scenario["key"] == name
    page = (out / "benchmarks.md").read_text()
    assert scenario["title"] in page
    if scenario["status"] == "skipped":  # fan-out without the S3/GCS plugins installed
        assert name == "fanout" and "Skipped" in page
        return
    assert scenario["status"] == "ok", scenario["notes"]
    roles = {row["role"] for row in scenario["rows"]}
    assert "archiver" in roles
    for row in scenario["rows"]:
        assert row["runs"], row["label"]
        for run in row["runs"]:
            assert run["seconds"] > 0
            assert run["rss_kib"] > 0  # from the kernel via GNU time, never estimated
        assert row["label"] in page.replace("\\|", "|")
    assert scenario["targets"]


def test_unknown_scenario_is_refused():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "unknown scenario 'nope'" in proc.stderr
