"""archiver.runtime: one configured archiver, opened the same way by every command;
components built on first use, stop flags, and the inputs of the job work (the store
context that carries the worker id and the lease's stop condition)."""

from __future__ import annotations

import sqlite3

import pytest

from archiver.hookspecs import hookimpl
from archiver.ledger import new_worker_id
from archiver.plugins import build_plugin_manager
from archiver.runtime import Runtime
from archiver.testing.configs import basic_config
from archiver.testing.emulator import ArtifactSpec


@pytest.fixture
def config(emu, tmp_path, monkeypatch):
    monkeypatch.setenv("PLANGREP_API_KEY", emu.api_key)
    path = tmp_path / "a.yaml"
    path.write_text(basic_config(emu, tmp_path))
    return str(path)


def test_components_are_built_on_first_use(config, emu):
    emu.add_project(project_id="p", name="P")
    with Runtime.open(config) as rt:
        assert rt.ledger.summary()["jobs"] == {}
        assert not {"source", "sinks", "common", "per_sink"} & set(vars(rt))
        assert emu.requests.snapshot() == []  # reading the ledger touched no API
        assert list(rt.sinks) == ["primary"] and "sinks" in vars(rt)
    with pytest.raises(sqlite3.ProgrammingError):  # an owned ledger closes with it
        rt.ledger.summary()


def test_a_ledger_handed_in_stays_open(config):
    with Runtime.open(config) as first:
        with Runtime(first.loaded, first.plugins, first.ledger) as second:
            assert second.ledger is first.ledger
        assert first.ledger.summary()["jobs"] == {}


def test_stop_flags(config):
    with Runtime.open(config) as rt:
        rt.request_drain()
        assert rt.draining.is_set() and not rt.stop.is_set()
    with Runtime.open(config) as rt:
        rt.request_stop()
        assert rt.draining.is_set() and rt.stop.is_set()


def test_the_store_context_carries_the_worker_and_the_lease(config):
    """Pending writers are recorded with this worker's id (recovery discards only those
    of dead owners) and writers stop when the job's lease is lost or a stop comes."""
    lost = []
    with Runtime.open(config) as rt:
        assert rt.store_context().owner is None
        rt.worker = new_worker_id()
        ctx = rt.store_context(stopped=lambda: bool(lost))
        assert ctx.owner == rt.worker_id == rt.worker.id
        assert not ctx.stopped()
        lost.append(True)
        assert ctx.stopped()
        lost.clear()
        rt.stop.set()
        assert ctx.stopped() and rt.store_context().stopped()


class Drop:
    @hookimpl
    def archiver_ignore_artifact(self, job, artifact):
        return True if artifact.path == "drop.me" else None


def test_items_of_a_job(emu, tmp_path, monkeypatch):
    monkeypatch.setenv("PLANGREP_API_KEY", emu.api_key)
    emu.add_project(project_id="p", name="P")
    job_id = emu.add_job("p", artifacts=[ArtifactSpec("keep.bin", 10, where="document"),
                                         ArtifactSpec("drop.me", 10, where="document")])["id"]
    path = tmp_path / "a.yaml"
    path.write_text(basic_config(emu, tmp_path))
    plugins = build_plugin_manager(entry_points=False, extra=[("drop", Drop())])
    with Runtime.open(str(path), plugins=plugins) as rt:
        job = rt.source.get_job(job_id)
        items = rt.items(job, rt.source.read_result(job))
        assert [(i.kind, i.path) for i in items] == [
            ("job", "job.json"), ("result", "result.json"), ("artifact", "keep.bin")]
        assert items[2].keys == {"primary": f"p/{job_id}/data/artifacts/keep.bin"}
