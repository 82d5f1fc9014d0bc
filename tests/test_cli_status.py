"""``status``, ``ls`` and ``cleanup`` (issue "At the terminal", parts 5-7): what the
ledger says, in ISO times, with pending writers and events; a missing ledger refused by
every command that only reads it; unknown jobs fail."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from cli_helpers import archiver, write_config

from archiver.ledger import open_ledger
from archiver.testing.emulator import ArtifactSpec

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


@pytest.fixture
def archived(emu, tmp_path):
    """A config whose ledger knows the demo jobs (3 archived)."""
    emu.load_demo()
    cfg = write_config(emu, tmp_path)
    out = archiver("run", "-c", cfg, key=emu.api_key)
    assert out.returncode == 0, out.stderr
    return cfg


def test_status_of_an_unknown_job_fails(archived):
    out = archiver("status", "-c", archived, "--job", "nope")
    assert out.returncode == 5 and out.stdout == ""
    assert out.stderr.strip() == (f"error: job nope: not in the ledger at "
                                  f"{archived.parent / 'state' / 'ledger.sqlite'} (never "
                                  "seen by this archiver, or another state_dir?)")
    assert archiver("status", "-c", archived, "--job", "nope", "--json").returncode == 5


def _dead_writer(state, token: str = "tok-1"):
    ledger = open_ledger(state)
    try:
        ledger.add_pending("primary", token, "job_demo_tower_ifc", "exports/full-set.bin",
                           owner=f"{os.uname().nodename}:999999:deadbeef")
    finally:
        ledger.close()


def test_status_shows_pending_writers_recent_events_and_iso_times(archived, tmp_path):
    _dead_writer(tmp_path / "state")
    out = archiver("status", "-c", archived, drop=("PLANGREP_API_KEY",))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(rf"^ledger: .*ledger.sqlite \(at {ISO}\)$", text, re.M)
    assert "jobs: archived 3," in text and re.search(r"sink primary: 19 objects, [\d.]+ MiB",
                                                     text)
    assert "pending writers: 1 (`archiver cleanup` discards the dead ones)" in text
    assert re.search(rf"  sink primary: job_demo_tower_ifc exports/full-set.bin since {ISO}, "
                     r"\S+:999999:deadbeef \(dead\)", text)
    assert "recent events:" in text
    assert len(re.findall(rf"^  {ISO} \w+", text, re.M)) == 10
    data = json.loads(archiver("status", "-c", archived, "--json").stdout)
    assert re.fullmatch(ISO, data["generated_at"])
    assert data["pending_writers"] == 1 and data["pending"][0]["alive"] is False
    assert re.fullmatch(ISO, data["pending"][0]["started_at"])
    assert all(re.fullmatch(ISO, e["time"]) for e in data["recent_events"])


def test_status_of_one_job(archived):
    out = archiver("status", "-c", archived, "--job", "job_demo_tower_ifc")
    assert out.returncode == 0, out.stderr
    assert re.search(rf"job job_demo_tower_ifc \(project proj_demo_harbour_tower\): archived,"
                     rf" status completed, expires {ISO[:-1]}.*, first seen {ISO}, "
                     rf"archived {ISO}", out.stdout)
    assert "events:" in out.stdout and re.search(rf"  {ISO} stored job_demo_tower_ifc",
                                                 out.stdout)
    data = json.loads(archiver("status", "-c", archived, "--json", "--job",
                               "job_demo_tower_ifc").stdout)
    assert data["job"]["state"] == "archived" and data["job"]["copies"]
    assert all(re.fullmatch(ISO, e["time"]) for e in data["events"])


@pytest.mark.parametrize("args", [
    ["status"], ["status", "--job", "x"], ["ls"], ["verify"], ["audit", "verify"],
    ["replicate", "--from", "primary", "--to", "primary2"], ["cleanup"],
    ["cleanup", "--dry-run"], ["ledger", "status"]])
def test_reading_commands_refuse_a_missing_ledger(emu, tmp_path, args):
    extra = f"  - name: primary2\n    type: local\n    root: {tmp_path / 'second'}\n"
    cfg = write_config(emu, tmp_path, extra_sink=extra)
    out = archiver(*args, "-c", cfg, drop=("PLANGREP_API_KEY",))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (f"error: no ledger at {tmp_path / 'state' / 'ledger.sqlite'}"
                                  ": wrong directory or state_dir?")
    assert not (tmp_path / "state").exists()
    assert emu.count() == 0


def test_ls_lists_filters_and_prints_json(emu, tmp_path):
    emu.load_demo()
    soon = time.time() + 3600
    emu.add_project(project_id="proj_x", name="X")
    from datetime import datetime, timezone
    emu.add_job("proj_x", job_id="job_soon", status="processing",
                expires_at=datetime.fromtimestamp(soon, timezone.utc),
                artifacts=[ArtifactSpec("a.json", size=10)])
    cfg = write_config(emu, tmp_path)
    assert archiver("run", "-c", cfg, key=emu.api_key).returncode == 0
    out = archiver("ls", "-c", cfg, drop=("PLANGREP_API_KEY",))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["JOB", "PROJECT", "STATE", "EXPIRES", "OBJECTS", "SIZE",
                                "SINKS"]
    row = next(line.split() for line in lines if line.startswith("job_demo_tower_ifc "))
    assert row[2] == "archived" and row[4] == "8" and row[-1] == "primary"
    assert len(lines) == 1 + 8
    rows = json.loads(archiver("ls", "-c", cfg, "--json").stdout)
    by_id = {r["job_id"]: r for r in rows}
    assert by_id["job_demo_tower_ifc"]["sinks"]["primary"]["objects"] == 8
    assert by_id["job_demo_tower_ifc"]["bytes"] > 1 << 20
    assert by_id["job_demo_school_live"]["state"] == "waiting"
    assert re.fullmatch(ISO, by_id["job_demo_tower_ifc"]["archived_at"])

    def ids(*args):
        out = archiver("ls", "-c", cfg, "--json", *args)
        assert out.returncode == 0, out.stderr
        return sorted(r["job_id"] for r in json.loads(out.stdout))

    assert ids("--state", "waiting") == ["job_demo_school_live", "job_soon"]
    assert ids("--state", "lost", "--state", "nothing_to_store") == [
        "job_demo_school_cancelled", "job_demo_school_old", "job_demo_tower_failed"]
    assert ids("--project", "proj_x") == ["job_soon"]
    assert ids("--sink", "primary") == ["job_demo_school_plans", "job_demo_tower_ifc",
                                        "job_demo_tower_rev_b"]
    assert "job_soon" in ids("--expiring", "2h") and "job_soon" not in ids("--expiring", "1m")
    bad = archiver("ls", "-c", cfg, "--sink", "nope")
    assert bad.returncode == 2 and "--sink nope: no sink of that name" in bad.stderr
    assert archiver("ls", "-c", cfg, "--state", "lost", "--project", "proj_x").stdout == \
        "no jobs match\n"


def test_cleanup_needs_no_key_and_names_each_removal_once(archived, tmp_path):
    where = tmp_path / "archive" / "proj_demo_harbour_tower"
    recorded = where / ".y.bin.%%fedcba9876543210.partial"
    recorded.write_bytes(b"a dead writer's")
    _dead_writer(tmp_path / "state", str(recorded))
    stray = where / ".x.bin.%%0123456789abcdef.partial"
    stray.write_bytes(b"leftover")
    dry = archiver("cleanup", "-c", archived, "--dry-run", drop=("PLANGREP_API_KEY",))
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would discard 1 dead writer(s)") and stray.exists()
    doc = json.loads(archiver("cleanup", "-c", archived, "--dry-run", "--json",
                              drop=("PLANGREP_API_KEY",)).stdout)
    assert doc["dry_run"] is True and len(doc["discarded"]) == 1
    out = archiver("cleanup", "-c", archived, "--older-than", "0",
                   drop=("PLANGREP_API_KEY",))
    assert out.returncode == 0, out.stderr
    assert f"primary: removed {stray}" in out.stdout.splitlines()
    assert "primary: removed primary: removed" not in out.stdout
    assert not stray.exists() and not recorded.exists()
    doc = json.loads(archiver("cleanup", "-c", archived, "--json",
                              drop=("PLANGREP_API_KEY",)).stdout)
    assert doc["discarded"] == [] and doc["removed_by_listing"] == {"primary": []}
