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
SCENARIOS = ["large", "fanout", "small", "rerun", "decompress", "startup", "scaleout",
             "celery"]

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("curl", "zstd", "gzip", "sha256sum", "timeout",
                                      "/usr/bin/time")),
    reason="the baselines need curl, gzip, zstd, sha256sum, timeout and GNU time")


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_runs_in_smoke_mode(name: str, tmp_path: Path):
    if name == "celery":
        _need_fleet_services()
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
    if name == "scaleout":  # 1 process and 2 worker processes, per-process RSS apart
        two = next(r for r in scenario["rows"] if r["label"].startswith("2 worker"))
        [run] = two["runs"]
        # forked from the fork server, a worker with nothing left to claim can live less
        # than the default sampling interval (0.2 s): smoke runs sample every 0.02 s,
        # and at least one worker is always seen
        assert 1 <= len(run["extra"]["rss_workers_kib"]) <= 2, run["extra"]
        assert all(k > 0 for k in run["extra"]["rss_workers_kib"])
        assert run["extra"]["rss_parent_kib"] > 0
        assert "Speed-up and CPU per artifact" in page


def _need_fleet_services() -> None:
    """Scenario 8 needs PostgreSQL, Redis and the Celery plugin: skip without them
    (fail under CI=true, where they must be there)."""
    import importlib.util
    import os
    import socket
    missing = [] if importlib.util.find_spec("archiver_celery") else ["archiver-celery"]
    for what, port in (("PostgreSQL", 5432), ("Redis", 6379)):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            missing.append(f"{what} on 127.0.0.1:{port}")
    if missing:
        message = f"scenario 8 needs {', '.join(missing)}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)


def test_merge_keeps_the_scenarios_not_rerun(tmp_path: Path):
    """``--merge`` replaces the sections of the scenarios in results.json and keeps the
    others from the published page, each with the run it comes from."""
    from benchmarks.harness import Row, ScenarioResult, Target
    from benchmarks.measure import Measurement
    from benchmarks.merge import parse_page
    from benchmarks.results import write_results

    published = (ROOT / "docs" / "benchmarks.md").read_text()
    (tmp_path / "benchmarks.md").write_text(published)
    before = parse_page(published)
    assert 3 in before.sections and before.sections[1].rows
    new = ScenarioResult("small", "3. Many small artifacts", "fresh", rows=[
        Row("**x**", "archiver", [Measurement(1.0, 1024, 0.5)], 10, "artifacts/s")],
        targets=[Target("a target", True, "1×")])
    write_results([new], tmp_path, info={"archiver commit": "abc"}, mode="default",
                  reps=1, total_seconds=60, chart=False, command="python -m benchmarks "
                  "--only small --merge", merge=True, when="2030-01-01 00:00 UTC")
    page = (tmp_path / "benchmarks.md").read_text()
    after = parse_page(page)
    assert set(after.sections) == set(before.sections)
    for n, kept in before.sections.items():
        if n != 3:  # kept verbatim below their provenance line
            assert kept.body.split("\n", 2)[2] in page, n
            assert after.sections[n].provenance == kept.provenance
            assert all(t in page for t in kept.targets)
    assert after.sections[3].provenance.startswith("*From the run of 2030-01-01 00:00 UTC")
    assert "| 3 | a target | ✅ met (1×) |" in page
    assert "Assembled by `python -m benchmarks --only small --merge`" in page


def test_unknown_scenario_is_refused():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "unknown scenario 'nope'" in proc.stderr
