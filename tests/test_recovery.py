"""archiver.recovery: recovery of the dead only. Real temporary files of real sinks,
pending rows in a real SQLite ledger; "time passes" by ageing the rows' timestamps."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from archiver.config import load_config
from archiver.default_plugins.local import LocalSink
from archiver.hookspecs import hookimpl
from archiver.ledger import WorkerId, new_worker_id, open_ledger
from archiver.plugins import build_plugin_manager
from archiver.recovery import recover_dead_writers
from archiver.runtime import Runtime

TTL = 3.0


class SharedDirSink(LocalSink):
    """A directory every host mounts (NFS): its temporary files mean the same on every
    host, so any host may discard them (as S3 upload ids or GCS sessions)."""

    name = "shared-dir"
    host_local = False


class SharedDirPlugin:
    @hookimpl
    def archiver_register_sinks(self, register):
        register(SharedDirSink)


def config_text(tmp_path: Path) -> str:
    return textwrap.dedent(f"""\
        source:
          type: plangrep
          base_url: http://127.0.0.1:9/api/open/v1
          api_key: ${{PLANGREP_API_KEY}}
        sinks:
          - name: primary
            type: local
            root: {tmp_path / 'archive'}
            temp_files: named
          - name: shared
            type: shared-dir
            root: {tmp_path / 'shared'}
            temp_files: named
        state_dir: {tmp_path / 'state'}
        lease: {{ttl: {TTL}, heartbeat: 1}}
        """)


@pytest.fixture
def rt(tmp_path):
    plugins = build_plugin_manager(entry_points=False, extra=[("shared", SharedDirPlugin())])
    loaded = load_config("a.yaml", plugins.registry, text=config_text(tmp_path),
                         env={"PLANGREP_API_KEY": "k"})
    runtime = Runtime(loaded, plugins, open_ledger(loaded.settings.state_dir))
    yield runtime
    runtime.close()
    runtime.ledger.close()


def dead_pid() -> int:
    """The pid of a process of this host that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class Writers:
    """Open writers (a real temporary file each) recorded as pending with an owner."""

    def __init__(self, rt: Runtime, db: Path):
        self.rt, self.db = rt, db
        self.open: list = []

    def add(self, sink: str, owner: str | None, name: str) -> tuple[int, Path]:
        writer = self.rt.sinks[sink].open_writer(f"proj/{name}/data/{name}.bin")
        writer.write(b"x" * 100)
        self.open.append(writer)
        token = writer.pending
        pid = self.rt.ledger.add_pending(sink, token, name, f"{name}.bin", owner=owner)
        assert Path(token).exists()
        return pid, Path(token)

    def worker(self, worker: WorkerId, heartbeat_age: float = 0.0) -> str:
        self.rt.ledger.register_worker(worker)
        if heartbeat_age:
            self.sql("UPDATE workers SET heartbeat_at=? WHERE worker_id=?",
                     time.time() - heartbeat_age, worker.id)
        return worker.id

    def sql(self, statement: str, *args) -> None:
        con = sqlite3.connect(self.db)
        with con:
            con.execute(statement, args)
        con.close()


@pytest.fixture
def writers(rt, tmp_path):
    return Writers(rt, tmp_path / "state" / "ledger.sqlite")


def pending_ids(rt) -> set[int]:
    return {r.id for r in rt.ledger.list_pending()}


def test_only_writers_of_dead_owners_are_discarded(rt, writers):
    live = writers.worker(new_worker_id())  # this process, heartbeat fresh
    same_host_dead = writers.worker(new_worker_id(pid=dead_pid()))  # fresh, but pid gone
    far_stale = writers.worker(WorkerId("host-far:4242:00aa", "host-far", 4242), 10 * TTL)
    far_fresh = writers.worker(WorkerId("host-far:4243:00bb", "host-far", 4243))
    rows = {
        "live": writers.add("primary", live, "live"),
        "dead_pid": writers.add("primary", same_host_dead, "dead_pid"),
        "far_stale_shared": writers.add("shared", far_stale, "far_stale_shared"),
        "far_fresh_shared": writers.add("shared", far_fresh, "far_fresh_shared"),
        "far_stale_local": writers.add("primary", far_stale, "far_stale_local"),
        "legacy": writers.add("primary", None, "legacy"),
        # another host's worker without a worker row (it unregistered or was forgotten)
        "unregistered": writers.add("shared", "host-far:77:00cc", "unregistered"),
    }
    out = recover_dead_writers(rt)
    gone = {name for name, (_, path) in rows.items() if not path.exists()}
    # kept: a live writer of this host; a fresh heartbeat elsewhere; a legacy row younger
    # than the ttl (all "live"); a dead writer's local file of another host ("elsewhere")
    assert gone == {"dead_pid", "far_stale_shared", "unregistered"}, out
    assert pending_ids(rt) == {rows[n][0] for n in rows} - {rows[n][0] for n in gone}
    assert (out.live, out.elsewhere, len(out.discarded), out.failed) == (3, 1, 3, [])
    kinds = [e.kind for e in rt.ledger.event_rows()]
    assert kinds.count("discarded") == 3


def test_a_legacy_row_is_dead_only_after_the_ttl(rt, writers):
    row_id, path = writers.add("primary", None, "legacy")
    assert recover_dead_writers(rt).discarded == [] and path.exists()
    writers.sql("UPDATE pending SET started=? WHERE id=?", time.time() - TTL - 1, row_id)
    out = recover_dead_writers(rt)
    assert len(out.discarded) == 1 and not path.exists() and not pending_ids(rt)


def test_a_stale_heartbeat_on_another_host_is_dead_once_past_the_ttl(rt, writers):
    far = writers.worker(WorkerId("host-far:4242:00aa", "host-far", 4242), TTL - 1)
    row_id, path = writers.add("shared", far, "far")
    assert recover_dead_writers(rt).live == 1 and path.exists()
    writers.sql("UPDATE workers SET heartbeat_at=? WHERE worker_id=?", time.time() - TTL - 1,
                far)
    assert len(recover_dead_writers(rt).discarded) == 1 and not path.exists()


def test_this_runtimes_own_writers_are_never_dead(rt, writers):
    rt.worker = new_worker_id()  # not even registered: it is this very process
    _, path = writers.add("primary", rt.worker.id, "mine")
    assert recover_dead_writers(rt).live == 1 and path.exists()


def test_force_discards_everything_and_dry_run_nothing(rt, writers):
    live = writers.worker(new_worker_id())
    far = writers.worker(WorkerId("host-far:4242:00aa", "host-far", 4242), 10 * TTL)
    paths = [writers.add("primary", live, "live")[1], writers.add("primary", far, "far")[1],
             writers.add("shared", live, "shared")[1]]
    dry = recover_dead_writers(rt, force=True, dry_run=True)
    assert len(dry.discarded) == 3 and all(p.exists() for p in paths)
    assert len(pending_ids(rt)) == 3
    out = recover_dead_writers(rt, force=True)
    assert len(out.discarded) == 3 and not any(p.exists() for p in paths)
    assert not pending_ids(rt)


# --------------------------------------------------------------------------- the CLI
def cleanup(cfg: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "archiver", "cleanup", "-c", str(cfg),
                          "--json", *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "ARCHIVER_LOAD_ENTRY_POINTS": "0"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_cleanup_command_dry_run_then_force(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(config_text(tmp_path).replace(
        f"  - name: shared\n    type: shared-dir\n    root: {tmp_path / 'shared'}\n"
        "    temp_files: named\n", ""))
    plugins = build_plugin_manager(entry_points=False)
    loaded = load_config(cfg, plugins.registry, env={"PLANGREP_API_KEY": "k"})
    rt = Runtime(loaded, plugins, open_ledger(loaded.settings.state_dir))
    try:
        writers = Writers(rt, tmp_path / "state" / "ledger.sqlite")
        live = writers.worker(new_worker_id())  # this test process: alive
        _, live_file = writers.add("primary", live, "live")
        _, dead_file = writers.add("primary", writers.worker(new_worker_id(pid=dead_pid())),
                                   "dead")

        dry = cleanup(cfg, "--dry-run")
        assert dry["dry_run"] and len(dry["discarded"]) == 1 and "dead" in dry["discarded"][0]
        assert dry["live_writers_left_alone"] == 1
        assert live_file.exists() and dead_file.exists() and len(pending_ids(rt)) == 2

        forced = cleanup(cfg, "--force")
        assert len(forced["discarded"]) == 2 and forced["errors"] == []
        assert not live_file.exists() and not dead_file.exists() and not pending_ids(rt)
    finally:
        rt.close()
        rt.ledger.close()
