"""archiver.dispatch: a dispatcher plugin (``archiver_register_dispatchers``) gets its
YAML section validated, and ``watch`` with ``dispatch.mode`` set only queues the jobs in
the ledger and drives the dispatcher's lifecycle, archiving nothing itself."""

from __future__ import annotations

import textwrap
import time

import pytest
from pydantic import Field

from archiver.components import ComponentConfig
from archiver.config import load_config
from archiver.dispatch import Dispatcher
from archiver.errors import ConfigError
from archiver.hookspecs import hookimpl
from archiver.plugins import build_plugin_manager
from archiver.runtime import Runtime
from archiver.service import Service


class BellConfig(ComponentConfig):
    bell: str
    loud: int = Field(1, ge=1)


class Bell(Dispatcher):
    """Records what the service does with it; rings no real bell."""

    name = "bell"
    Config = BellConfig
    ledger_schemes = ()          # any ledger: this test uses SQLite
    calls: list[str] = []

    def start(self, rt, settings):
        self.rt, self.settings = rt, settings
        Bell.calls.append("start")

    def drain(self):
        Bell.calls.append("drain")

    def close(self, grace):
        Bell.calls.append("close")

    def stats(self):
        queued = self.rt.ledger.queue_stats()["queued"]
        return {"dispatch_outstanding": queued, "dispatch_sent_total": 7}


class BellPlugin:
    @hookimpl
    def archiver_register_dispatchers(self, register):
        register(Bell)


class StrictBell(Bell):
    name = "strict"
    ledger_schemes = ("postgresql",)


class StrictPlugin:
    @hookimpl
    def archiver_register_dispatchers(self, register):
        register(StrictBell)


def plugins():
    return build_plugin_manager(extra=[("bell", BellPlugin()), ("strict", StrictPlugin())],
                                entry_points=False)


def write(tmp_path, emu, body: str):
    path = tmp_path / "archiver.yaml"
    path.write_text(textwrap.dedent(f"""\
        source: {{type: plangrep, base_url: "{emu.base_url}", api_key: "{emu.api_key}"}}
        sinks: [{{name: primary, type: local, root: "{tmp_path / 'archive'}"}}]
        state_dir: {tmp_path / 'state'}
        """) + textwrap.dedent(body))
    return path


def test_the_section_named_after_the_mode_is_validated_with_its_path(tmp_path, emu):
    reg = plugins().registry
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, emu, "dispatch: {mode: bell}\nbell: {loud: 0}\n"), reg)
    assert "bell.bell: missing" in str(exc.value), exc.value
    assert "bell.loud: Input should be greater than or equal to 1" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, emu, "dispatch: {mode: strict}\nstrict: {bell: x}\n"),
                    reg)
    assert "dispatch.mode: mode 'strict' needs a ledger that every worker host reaches " \
           "(postgresql), not sqlite" in str(exc.value), exc.value
    loaded = load_config(write(tmp_path, emu, "dispatch: {mode: bell}\nbell: {bell: x}\n"),
                         reg)
    assert loaded.dispatcher.cls is Bell and loaded.dispatcher.config.bell == "x"
    assert load_config(write(tmp_path, emu, "bell: {bell: x}\n"), reg).dispatcher is None


def test_watch_in_a_dispatch_mode_queues_jobs_and_drives_the_dispatcher(tmp_path, emu):
    jobs = [emu.add_job("proj_d")["id"] for _ in range(3)]
    Bell.calls = []
    pm = plugins()
    cfg = write(tmp_path, emu, "dispatch: {mode: bell}\nbell: {bell: ding}\n"
                               "serve: {port: 0, insecure_accept_unsigned: true}\n")
    rt = Runtime.open(str(cfg), plugins=pm)
    svc = Service(rt, serve=True, poll_interval=0.1, config_file=str(cfg))
    try:
        svc.start()
        deadline = time.monotonic() + 20
        while rt.ledger.queue_stats()["queued"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(rt.ledger.job_states()) == sorted(jobs)
        assert set(rt.ledger.job_states().values()) == {"queued"}   # nobody archives
        assert Bell.calls == ["start"]
        text = svc.metrics.render()[0].decode()
        assert "archiver_dispatch_outstanding 3.0" in text, text
        assert "archiver_dispatch_sent_total 7.0" in text, text
        assert svc.health()[1]["dispatch"]["dispatch_sent_total"] == 7
        svc.shutdown()
        assert "drain" in Bell.calls
    finally:
        svc.close()
        rt.close()
    assert Bell.calls[-1] == "close"
    assert not (tmp_path / "archive").exists() or not any((tmp_path / "archive").rglob("*.*"))
