"""Progress people can read (issue "At the terminal", part 2): bytes, rate, ETA and the
file in flight on a terminal, nothing when piped, and no cost when nobody watches."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from unittest import mock

import pytest
from cli_helpers import archiver, in_terminal, write_config

from archiver import api
from archiver.executors import RunReport
from archiver.progress import INTERVAL, Progress, metered
from archiver.testing.emulator import ArtifactSpec
from archiver.workers.fleet import triage_and_enqueue

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def slow_job(emu, size=4 << 20, slow=0.025, path="drawings/big plan.bin"):
    """One job whose artifact takes ~size/64KiB*slow seconds to download."""
    emu.add_project(project_id="proj_p", name="P")
    job = emu.add_job("proj_p", artifacts=[ArtifactSpec(path, size=size),
                                           ArtifactSpec("small.json", size=100)])
    emu.faults.slow_body = slow
    emu.faults.fault_paths = {path}
    return job


@pytest.mark.timeout(60)
def test_a_terminal_shows_bytes_rate_eta_and_the_file(emu, tmp_path):
    slow_job(emu)
    cfg = write_config(emu, tmp_path)
    code, out = in_terminal("run", "-c", cfg, key=emu.api_key)
    assert code == 0, out
    screen = ANSI.sub("", out)
    assert "big plan.bin" in screen                              # the file in flight
    assert re.search(r"\d\.\d/4\.0 MiB", screen), screen[-2000:]  # bytes done / total
    assert re.search(r"\d+(\.\d)? (KiB|MiB)/s", screen)           # the rate
    assert re.search(r"ETA \d\d:\d\d", screen)                    # the time remaining
    # the summary: human sizes and the elapsed time
    assert re.search(r"archived 1 job\(s\): 4 object\(s\) written, 4 MiB received in "
                     r"\d+(\.\d)?s", screen)


@pytest.mark.timeout(60)
def test_a_pipe_gets_no_progress(emu, tmp_path):
    slow_job(emu, size=1 << 20)
    cfg = write_config(emu, tmp_path)
    out = archiver("run", "-c", cfg, key=emu.api_key)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert "\x1b" not in out.stdout and "ETA" not in out.stdout
    assert out.stdout.startswith("archived 1 job(s): 4 object(s) written, 1 MiB received in ")


@pytest.mark.timeout(60)
def test_quiet_and_json_show_no_progress_on_a_terminal(emu, tmp_path):
    slow_job(emu, size=1 << 20, slow=0.01)
    cfg = write_config(emu, tmp_path)
    code, out = in_terminal("run", "-q", "-c", cfg, key=emu.api_key)
    assert code == 0 and "ETA" not in out and "archived" not in out, out
    emu.add_job("proj_p", artifacts=[ArtifactSpec("again.bin", size=1 << 20)])
    code, out = in_terminal("run", "--json", "-c", cfg, key=emu.api_key)
    assert code == 0 and "ETA" not in out
    assert json.loads(ANSI.sub("", out))["archived"]


@pytest.mark.timeout(90)
def test_worker_processes_feed_the_same_display(emu, tmp_path):
    slow_job(emu, size=3 << 20)
    cfg = write_config(emu, tmp_path)
    code, out = in_terminal("run", "--workers", "2", "-c", cfg, key=emu.api_key)
    assert code == 0, out
    screen = ANSI.sub("", out)
    assert "big plan.bin" in screen and re.search(r"ETA \d\d:\d\d", screen)


def test_bytes_events_are_throttled_and_small_objects_send_none(emu, tmp_path, monkeypatch):
    monkeypatch.setenv("PLANGREP_API_KEY", emu.api_key)
    slow_job(emu, size=2 << 20, slow=0.02)   # 32 pieces, ~0.65 s
    cfg = write_config(emu, tmp_path, top="chunk_size: 64KiB\n")
    events: list[tuple[str, dict]] = []
    with api.open_config(str(cfg), on_progress=lambda k, d: events.append((k, d))) as rt:
        report = api.run(rt)
    assert report.exit_code == 0 and report.elapsed > 0.5
    sent = [d for k, d in events if k == "bytes"]
    assert {d["path"] for d in sent} == {"drawings/big plan.bin"}  # not small.json
    assert 3 <= len(sent) <= report.elapsed / INTERVAL + 2
    assert [d["done"] for d in sent] == sorted(d["done"] for d in sent)
    assert all(d["total"] == 2 << 20 for d in sent)
    done = [d for k, d in events if k == "artifact" and d["path"] == "drawings/big plan.bin"]
    assert done == [{"job": done[0]["job"], "path": "drawings/big plan.bin", "ok": True,
                     "size": 2 << 20, "skipped": False}]


def test_nobody_watching_costs_no_clock(emu, tmp_path, monkeypatch):
    monkeypatch.setenv("PLANGREP_API_KEY", emu.api_key)
    cfg = write_config(emu, tmp_path)
    with api.open_config(str(cfg)) as rt:
        assert rt.store_context().on_bytes is None
    with api.open_config(str(cfg), on_progress=lambda k, d: None) as rt:
        assert rt.store_context().on_bytes is not None
        monkeypatch.setenv("ARCHIVER_PROGRESS", "0")  # a supervisor without a display
        assert rt.store_context().on_bytes is None


def _worker_events(emu, tmp_path, env: dict) -> list[dict]:
    cfg = write_config(emu, tmp_path, top="chunk_size: 64KiB\n")
    with mock.patch.dict(os.environ, {"PLANGREP_API_KEY": emu.api_key}):
        rt = api.open_config(str(cfg))
    with rt:
        assert triage_and_enqueue(rt, rt.source.iter_jobs(), RunReport())
    out = subprocess.run([sys.executable, "-m", "archiver", "worker", "-c", str(cfg),
                          "--jsonl", "--drain"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PLANGREP_API_KEY": emu.api_key, **env})
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.mark.timeout(90)
def test_worker_processes_send_throttled_bytes_events(emu, tmp_path):
    slow_job(emu, size=2 << 20, slow=0.02)
    events = _worker_events(emu, tmp_path, {})
    sent = [e for e in events if e["type"] == "progress" and e["kind"] == "bytes"]
    assert 3 <= len(sent) <= 0.02 * 32 / INTERVAL + 6  # never one per chunk (32 here)
    assert any(e["type"] == "outcome" and e["state"] == "archived" for e in events)


@pytest.mark.timeout(90)
def test_workers_of_a_supervisor_without_a_display_send_no_bytes(emu, tmp_path):
    slow_job(emu, size=1 << 20, slow=0.02)
    events = _worker_events(emu, tmp_path, {"ARCHIVER_PROGRESS": "0"})
    assert not [e for e in events if e.get("kind") == "bytes"]


def test_a_disabled_display_never_imports_rich():
    code = ("import sys\nfrom archiver.progress import Progress\n"
            "p = Progress(False)\nassert p.callback is None\n"
            "with p:\n    p.update('bytes', {'job': 'j', 'path': 'p', 'done': 1})\n"
            "assert 'rich' not in sys.modules, 'rich imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_display_follows_the_events():
    p = Progress(True)
    with p:
        p.update("job", {"job": "j"})
        p.update("bytes", {"job": "j", "path": "a.bin", "done": 10, "total": 100})
        p.update("bytes", {"job": "j", "path": "b.bin", "done": 5, "total": 50})
        task = p._bar.tasks[0]
        assert task.completed == 15 and task.total == 150   # done / known so far
        assert len(p._bar.tasks) == 3                       # the whole + 2 in flight
        p.update("artifact", {"job": "j", "path": "a.bin", "ok": True, "size": 100})
        p.update("artifact", {"job": "j", "path": "c.json", "ok": False, "size": 7})
        task = p._bar.tasks[0]
        assert task.completed == 112 and len(p._bar.tasks) == 2
        assert task.fields["info"] == "1 job(s) 2 obj 1 failed"


def test_metered_passes_every_byte_and_throttles(monkeypatch):
    clock = iter(x * 0.03 for x in range(1000))
    monkeypatch.setattr("archiver.progress.time.monotonic", lambda: next(clock))
    seen = []
    chunks = [b"x" * 10] * 20
    out = b"".join(metered(chunks, lambda k, d: seen.append(d["done"]), "j", "p", 200))
    assert out == b"x" * 200
    assert 3 <= len(seen) <= 6 and seen == sorted(seen)
    assert b"".join(metered(chunks, None, "j", "p", None)) == b"x" * 200


@pytest.mark.timeout(90)
def test_verify_and_replicate_show_progress_on_a_terminal(emu, tmp_path):
    slow_job(emu, size=8 << 20, slow=0.0)
    extra = f"  - name: copy\n    type: local\n    root: {tmp_path / 'copy'}\n"
    cfg = write_config(emu, tmp_path, extra_sink=extra)
    cfg_one = tmp_path / "one.yaml"
    cfg_one.write_text(cfg.read_text().replace(extra, ""))
    assert archiver("run", "-c", cfg_one, key=emu.api_key).returncode == 0
    code, out = in_terminal("verify", "-c", cfg_one)
    screen = ANSI.sub("", out)
    assert code == 0, screen
    assert re.search(r"verifying +.*\d+\.\d/8\.0 MiB", screen), screen[-1500:]
    assert re.search(r"checked 4 of 4 object\(s\), 8 MiB: OK", screen)
    code, out = in_terminal("replicate", "-c", cfg, "--from", "primary", "--to", "copy")
    screen = ANSI.sub("", out)
    assert code == 0, screen
    assert re.search(r"replicating +.*/8\.0 MiB", screen), screen[-1500:]
    assert "primary -> copy: 1 job(s) complete in copy (1 copied now, 0 already there)" \
        in screen
    piped = archiver("verify", "-c", cfg_one)
    assert "verifying" not in piped.stdout + piped.stderr
