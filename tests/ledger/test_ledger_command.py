"""``archiver ledger status`` and ``archiver ledger migrate``."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from archiver.cli import cli
from archiver.ledger import migrations as mig
from archiver.ledger import new_worker_id, open_ledger
from archiver.testing.ledger_contract import job

FIXTURE = Path(__file__).parent / "fixtures" / "ledger-v1.sqlite"
KNOWN = mig.latest("sqlite")


@pytest.fixture
def config(tmp_path):
    def write(top: str = "") -> Path:
        path = tmp_path / "archiver.yaml"
        path.write_text(f"""\
source:
  type: plangrep
  base_url: http://127.0.0.1:9/api/open/v1
  api_key: ${{PLANGREP_API_KEY}}
sinks:
  - name: primary
    type: local
    root: {tmp_path / "archive"}
state_dir: {tmp_path / "state"}
{top}""")
        return path
    return write


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env={"PLANGREP_API_KEY": None, **(env or {})})


def test_status_of_a_missing_ledger_is_an_error(config, tmp_path):
    result = run("ledger", "status", "-c", str(config()))
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: no ledger at {tmp_path / 'state' / 'ledger.sqlite'}"
                                      ": wrong directory or state_dir?")
    assert not (tmp_path / "state").exists()
    assert run("ledger", "migrate", "-c", str(config())).exit_code == 2


def test_status_and_migrate_an_old_ledger(config, tmp_path):
    cfg = config()
    path = tmp_path / "state" / "ledger.sqlite"
    path.parent.mkdir()
    shutil.copyfile(FIXTURE, path)
    data = path.read_bytes()
    result = run("ledger", "status", "-c", str(cfg))
    assert result.exit_code == 0, result.output
    assert f"ledger: sqlite {path}" in result.stdout
    assert f"schema: version 1 of {KNOWN} known; pending: 0002_claims" in result.stdout
    assert "workers: none registered" in result.stdout
    result = run("ledger", "migrate", "-c", str(cfg), "--dry-run")
    assert result.exit_code == 0 and "would apply: 0002_claims" in result.stdout
    assert path.read_bytes() == data  # status and --dry-run changed nothing
    result = run("ledger", "migrate", "-c", str(cfg), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["from_version"], doc["version"], doc["applied"], doc["pending"]) == \
        (1, KNOWN, [m.name for m in mig.known("sqlite")[1:]], [])
    result = run("ledger", "migrate", "-c", str(cfg))
    assert result.exit_code == 0 and "up to date" in result.stdout
    result = run("ledger", "status", "-c", str(cfg), "--json")
    doc = json.loads(result.stdout)
    assert doc["version"] == doc["known_version"] == KNOWN and doc["pending"] == []
    assert [m["name"] for m in doc["migrations"]] == [m.name for m in mig.known("sqlite")]
    assert all(m["sha256"] == k.sha256 for m, k in zip(doc["migrations"], mig.known("sqlite")))


def test_status_lists_workers_and_their_jobs(config, tmp_path):
    cfg = config()
    ledger = open_ledger(tmp_path / "state")
    worker = new_worker_id()
    ledger.register_worker(worker)
    assert ledger.claim(job(1), worker.id, 60, max_lost=3).ok
    ledger.close()
    result = run("ledger", "status", "-c", str(cfg))
    assert result.exit_code == 0, result.output
    assert f"worker {worker.id} (host {worker.host}, pid {worker.pid}): heartbeat" in \
        result.stdout
    assert "holds job_1" in result.stdout and "(up to date)" in result.stdout
    doc = json.loads(run("ledger", "status", "-c", str(cfg), "--json").stdout)
    (w,) = doc["workers"]
    assert w["worker_id"] == worker.id and w["jobs"] == ["job_1"] and w["heartbeat_age"] >= 0


def test_a_newer_schema_is_exit_2_with_the_message(config, tmp_path):
    cfg = config()
    open_ledger(tmp_path / "state").close()
    path = tmp_path / "state" / "ledger.sqlite"
    con = sqlite3.connect(path)
    con.execute("INSERT INTO schema_migrations VALUES (?, '0042_future', 'ff', 0)", (KNOWN + 40,))
    con.commit()
    con.close()
    for command in ("status", "migrate"):
        result = run("ledger", command, "-c", str(cfg))
        assert result.exit_code == 2
        assert f"has schema version {KNOWN + 40}; this archiver knows up to {KNOWN}: " \
               "upgrade archiver" in result.stderr


def test_bad_configs_are_exit_2(config, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: [\n")
    result = run("ledger", "status", "-c", str(bad))
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    result = run("ledger", "status", "-c", str(config("ledger:\n  url: postgresql://h/db\n")),
                 env={"ARCHIVER_DISABLE_PLUGINS": "postgres"})  # as if not installed
    assert result.exit_code == 2
    assert "PostgreSQL needs the archiver-postgres plugin" in result.stderr


# --------------------------------------------------------------------------- workers
def test_workers_lists_each_worker_alive_or_stale_with_its_leases(config, tmp_path):
    import os
    import socket
    import time

    cfg = config("lease: {ttl: 30s, heartbeat: 10s}\n")
    ledger = open_ledger(tmp_path / "state")
    me = new_worker_id()  # this process: alive
    gone = new_worker_id(pid=2 ** 22 + 17)  # this host, no such pid: stale
    far = new_worker_id(host="other-host", pid=os.getpid())  # another host, old heartbeat
    for w in (me, gone, far):
        ledger.register_worker(w)
    assert ledger.claim(job(1), me.id, 60.0, max_lost=3).ok
    assert ledger.claim(job(2), me.id, 60.0, max_lost=3).ok
    assert ledger.claim(job(3), far.id, 60.0, max_lost=3).ok
    ledger.close()
    with sqlite3.connect(tmp_path / "state" / "ledger.sqlite") as con:  # a heartbeat 5 min old
        con.execute("UPDATE workers SET heartbeat_at=? WHERE worker_id=?",
                    (time.time() - 300, far.id))
    result = run("ledger", "workers", "-c", str(cfg), "--json")
    assert result.exit_code == 0, result.output
    doc = {w["worker_id"]: w for w in json.loads(result.stdout)}
    assert set(doc) == {me.id, gone.id, far.id}
    assert (doc[me.id]["alive"], doc[gone.id]["alive"], doc[far.id]["alive"]) == \
        (True, False, False)
    assert doc[me.id]["host"] == socket.gethostname() and doc[me.id]["pid"] == me.pid
    assert [j["job_id"] for j in doc[me.id]["jobs"]] == ["job_1", "job_2"]
    assert all(55 < j["lease_left"] <= 60 for j in doc[me.id]["jobs"])
    assert doc[far.id]["heartbeat_age"] >= 299 and doc[gone.id]["jobs"] == []
    result = run("ledger", "workers", "-c", str(cfg))
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert f"host {me.host}  pid {me.pid}  heartbeat 0s ago  alive  holds job_1 (lease " \
        "until " in lines[me.id]
    assert "job_2 (lease until" in lines[me.id]
    assert lines[gone.id].endswith("stale  holds no jobs")
    assert "heartbeat 300s ago  stale  holds job_3" in lines[far.id]


def test_workers_of_an_empty_ledger_and_a_missing_one(config, tmp_path):
    cfg = config()
    assert run("ledger", "workers", "-c", str(cfg)).exit_code == 2  # no ledger there
    open_ledger(tmp_path / "state").close()
    result = run("ledger", "workers", "-c", str(cfg))
    assert result.exit_code == 0 and result.stdout == "no workers registered\n"
    result = run("ledger", "workers", "-c", str(cfg), "--json")
    assert json.loads(result.stdout) == []
