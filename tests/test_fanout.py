"""archiver.fanout's download slots: ``concurrency`` bounds the downloads in flight. A
sink that holds no memory through its commit (local) frees the slot when the body has
been read, so the next download starts while the object is made durable and read back;
a sink that buffers through its commit keeps the slot until it is committed; an object
that waited for a slot while a graceful stop came starts nothing.

One process at ``concurrency: 1``, two artifacts, a real local sink whose commit waits
(at most a few seconds) for the emulator to see the second artifact's request."""

from __future__ import annotations

import textwrap
import time
from typing import ClassVar

from archiver import api
from archiver.config import load_config
from archiver.default_plugins.local import LocalSink
from archiver.hookspecs import hookimpl
from archiver.ledger import open_ledger
from archiver.plugins import build_plugin_manager
from archiver.runtime import Runtime
from archiver.testing.emulator import ArtifactSpec


class Waiting(LocalSink):
    """A local sink whose artifact commits each wait for a second artifact request, and
    record how many artifact requests the emulator had seen when they went ahead."""

    name = "waiting"
    emu: ClassVar = None
    wait: ClassVar[float] = 5.0
    seen: ClassVar[list[int]] = []
    on_commit: ClassVar = None  # called (with no argument) as an artifact's commit begins

    class Config(LocalSink.Config):
        pass

    def open_writer(self, key, metadata=None):
        writer = super().open_writer(key, metadata)
        commit = writer.commit

        def waiting(digests):
            if key.endswith(".bin"):  # the artifacts (not job.json, result.json, the bag)
                if Waiting.on_commit is not None:
                    Waiting.on_commit()
                deadline = time.monotonic() + self.wait
                while self.emu.count(route="artifact") < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                self.seen.append(self.emu.count(route="artifact"))
            return commit(digests)
        writer.commit = waiting
        return writer


class Buffering(Waiting):
    name = "buffering"
    commit_buffers = True  # as S3 or GCS: the last part is still in memory at commit


class Plugin:
    @hookimpl
    def archiver_register_sinks(self, register):
        register(Waiting)
        register(Buffering)


def run_one_job(emu, tmp_path, sink_type: str, expect: str = "archived") -> list[int]:
    emu.add_project(project_id="proj_f", name="F")
    emu.add_job("proj_f", artifacts=[ArtifactSpec(f"a{i}.bin", 8192, where="document")
                                     for i in range(2)])
    Waiting.emu, Waiting.seen = emu, []
    plugins = build_plugin_manager(entry_points=False, extra=[("w", Plugin())])
    text = textwrap.dedent(f"""\
        source: {{type: plangrep, base_url: "{emu.base_url}", api_key: "{emu.api_key}"}}
        sinks:
          - {{name: s, type: {sink_type}, root: "{tmp_path / 'archive'}"}}
        state_dir: {tmp_path / 'state'}
        concurrency: 1
        """)
    loaded = load_config("x.yaml", plugins.registry, text=text)
    ledger = open_ledger(loaded.settings.state_dir)
    rt = Runtime(loaded, plugins, ledger)
    Waiting.runtime = rt
    try:
        report = api.run(rt)
    finally:
        rt.close()
        ledger.close()
    assert len(getattr(report, expect)) == 1, report.as_dict()
    return Waiting.seen


def test_a_local_commit_frees_the_download_slot(emu, tmp_path):
    seen = run_one_job(emu, tmp_path, "waiting")
    # the first artifact's commit saw the second one's request, made meanwhile
    assert seen == [2, 2], seen


def test_a_sink_buffering_through_its_commit_keeps_the_slot(emu, tmp_path):
    Waiting.wait = 0.5
    try:
        seen = run_one_job(emu, tmp_path, "buffering")
    finally:
        Waiting.wait = 5.0
    assert seen == [1, 2], seen  # the second download began after the first commit


def test_a_drain_while_waiting_for_a_slot_starts_nothing_new(emu, tmp_path):
    """The second artifact waits for the slot the first keeps through its commit; a
    graceful stop comes meanwhile: the first finishes, the second is never requested."""
    Waiting.wait = 0.5
    Waiting.on_commit = lambda: Waiting.runtime.request_drain()
    try:
        seen = run_one_job(emu, tmp_path, "buffering", expect="incomplete")
    finally:
        Waiting.wait, Waiting.on_commit = 5.0, None
    assert seen == [1], seen
    assert emu.count(route="artifact") == 1
