"""archiver.jobrecords: a job's object records are queued and committed in groups, all
or nothing per group, every ``every`` seconds while the job goes on, at ``most`` queued
records, and before the job is done; a process killed before its group was committed
leaves objects the next run finds already stored (``existed``), never a second copy.

Against a real SQLite ledger, the emulator and the local sink; the crash is a real
``SIGKILL`` of a real ``archiver`` run in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from archiver import api
from archiver.config import load_config
from archiver.jobrecords import JobRecords
from archiver.ledger import open_ledger
from archiver.ledger.chainrules import verify_chain
from archiver.runtime import Runtime
from archiver.testing.emulator import ArtifactSpec


@pytest.fixture
def ledger(tmp_path):
    led = open_ledger(tmp_path / "state")
    yield led
    led.close()


def events_of(ledger, job_id: str) -> list[str]:
    return sorted(e.message for e in ledger.event_rows(job_id, limit=100))


def event(ledger, message: str):
    return lambda: ledger.event("note", message, job_id="job_r")


def test_queued_records_commit_together_at_flush(ledger):
    records = JobRecords(ledger)
    for name in ("a", "b", "c"):
        records.add(event(ledger, name))
    assert events_of(ledger, "job_r") == [] and len(records) == 3  # queued, not committed
    records.flush()
    assert events_of(ledger, "job_r") == ["a", "b", "c"] and len(records) == 0
    brk, n = verify_chain(ledger.audit_rows())
    assert brk is None and n == 3
    records.flush()  # nothing queued: no transaction, nothing written
    assert len(list(ledger.audit_rows())) == 3


def test_a_group_is_all_or_nothing(ledger):
    """One failing unit fails the whole group: it was one transaction."""
    records = JobRecords(ledger)
    records.add(event(ledger, "a"))
    records.add(lambda: (_ for _ in ()).throw(ValueError("broken record")))
    records.add(event(ledger, "c"))
    with pytest.raises(ValueError, match="broken record"):
        records.flush()
    assert events_of(ledger, "job_r") == [] and not list(ledger.audit_rows())


def test_the_most_th_record_commits_the_group(ledger):
    records = JobRecords(ledger, most=3)
    records.add(event(ledger, "a"))
    records.add(event(ledger, "b"))
    assert events_of(ledger, "job_r") == []
    records.add(event(ledger, "c"))  # the third: committed by the thread adding it
    assert events_of(ledger, "job_r") == ["a", "b", "c"] and len(records) == 0


def test_gather_commits_while_the_job_goes_on(ledger):
    """A fast object's records are committed within ``every`` seconds although a slow
    object of the same job is still in flight; the results come back in order."""
    records = JobRecords(ledger, every=0.05)
    release = threading.Event()

    def fast():
        records.add(event(ledger, "fast"))
        return "fast"

    def slow():
        assert release.wait(10)
        records.add(event(ledger, "slow"))
        return "slow"

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(slow), pool.submit(fast)]
        gathered: list = []
        gatherer = threading.Thread(target=lambda: gathered.extend(records.gather(futures)))
        gatherer.start()
        deadline = time.monotonic() + 5
        while events_of(ledger, "job_r") != ["fast"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert events_of(ledger, "job_r") == ["fast"]  # committed, the slow one still runs
        assert gatherer.is_alive()
        release.set()
        gatherer.join(10)
    assert gathered == ["slow", "fast"]
    assert len(records) == 1  # the slow one's, queued after the last periodic commit
    records.flush()
    assert events_of(ledger, "job_r") == ["fast", "slow"]


KILLER = textwrap.dedent('''\
    """Runs one archiver pass whose artifact hook SIGKILLs the process once b.bin is
    stored: after its sink committed, before the job's records were committed."""
    import os
    import signal
    import sys

    from archiver import api
    from archiver.config import load_config
    from archiver.hookspecs import hookimpl
    from archiver.ledger import open_ledger
    from archiver.plugins import build_plugin_manager
    from archiver.runtime import Runtime


    class Killer:
        @hookimpl
        def archiver_artifact_done(self, job, artifact, result):
            if artifact is not None and artifact.path == "b.bin" and result.ok:
                os.kill(os.getpid(), signal.SIGKILL)


    plugins = build_plugin_manager(entry_points=False, extra=[("killer", Killer())])
    with open(sys.argv[1]) as f:
        loaded = load_config(sys.argv[1], plugins.registry, text=f.read())
    api.run(Runtime(loaded, plugins, open_ledger(loaded.settings.state_dir)))
    ''')


def test_a_kill_before_the_group_commit_loses_no_object_and_stores_none_twice(
        emu, tmp_path, plugins):
    emu.add_project(project_id="proj_k", name="K")
    job = emu.add_job("proj_k", artifacts=[ArtifactSpec(f"{n}.bin", 4096, where="document")
                                          for n in "abc"])
    archive = tmp_path / "archive"
    config = tmp_path / "archiver.yaml"
    config.write_text(textwrap.dedent(f"""\
        source: {{type: plangrep, base_url: "{emu.base_url}", api_key: "{emu.api_key}"}}
        sinks:
          - {{name: s, type: local, root: "{archive}"}}
        state_dir: {tmp_path / 'state'}
        concurrency: 1
        """))
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), str(config)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    b_files = [p for p in archive.rglob("b.bin") if p.is_file()]
    assert len(b_files) == 1  # stored in the sink ...
    led = open_ledger(tmp_path / "state")
    try:
        assert ("b.bin", "s") not in led.copies(job["id"])  # ... and not recorded yet
    finally:
        led.close()

    loaded = load_config(str(config), plugins.registry, text=config.read_text())
    led = open_ledger(loaded.settings.state_dir)
    rt = Runtime(loaded, plugins, led)
    try:
        report = api.run(rt)
        assert report.archived == [job["id"]], report.as_dict()
        copies = led.copies(job["id"])
        assert {p for p, _ in copies} >= {"a.bin", "b.bin", "c.bin"}
        lines = [json.loads(r.line) for r in led.audit_rows()]
        b_copies = [ln for ln in lines if ln["kind"] == "copy" and ln.get("path") == "b.bin"]
        assert len(b_copies) == 1 and b_copies[0]["data"]["existed"] is True, b_copies
        brk, _ = verify_chain(led.audit_rows())
        assert brk is None
    finally:
        rt.close()
        led.close()
    for name in "abc":
        assert len([p for p in archive.rglob(f"{name}.bin") if p.is_file()]) == 1
    assert not [p for p in archive.rglob("*") if p.name.endswith(".partial")]
    gets = [r for r in emu.requests.snapshot()
            if r.route in ("artifact", "project_artifact") and r.status == 200
            and r.query.get("path") == "b.bin"]
    assert len(gets) == 2  # fetched again after the kill: nothing recorded it
