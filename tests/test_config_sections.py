"""Plugin-owned top-level sections (``archiver_register_sections``) and the expiry hook
(``archiver_job_expiring``): the seams a hook-only plugin such as archiver-notify needs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, SecretStr

from archiver import api
from archiver.components import ComponentConfig
from archiver.config import load_config
from archiver.errors import ConfigError, PluginError
from archiver.hookspecs import hookimpl
from archiver.plugins import build_plugin_manager
from archiver.runtime import Runtime
from archiver.testing.configs import basic_config

BASE = ("source: {type: plangrep, base_url: 'http://127.0.0.1:9', api_key: k}\n"
        "sinks: [{name: a, type: local, root: /tmp/archiver-sections-test}]\n")


class Endpoint(BaseModel):
    model_config = {"extra": "forbid"}
    url: str
    secret: SecretStr | None = None


class Notify:
    name = "notify"
    built: list = []

    class Config(ComponentConfig):
        endpoints: list[Endpoint] = []

    def __init__(self, config):
        self.config = config
        Notify.built.append(self)


class SectionPlugin:
    @staticmethod
    @hookimpl
    def archiver_register_sections(register):
        register(Notify)


def manager(*extra):
    return build_plugin_manager(entry_points=False, extra=[("notify", SectionPlugin), *extra])


def test_a_section_is_validated_with_yaml_paths_and_built():
    p = manager()
    assert "section:notify" in p.infos["notify"].components
    with pytest.raises(ConfigError) as err:
        load_config("f.yaml", p.registry, env={},
                    text=BASE + "notify:\n  endpoints:\n    - {url: 3, bogus: 1}\n")
    assert "f.yaml:5: notify.endpoints[0].url: Input should be a valid string" in str(err.value)
    assert "notify.endpoints[0].bogus: unknown key" in str(err.value)
    loaded = load_config("f.yaml", p.registry, env={"HOOK": "whsec_x"},
                         text=BASE + "notify:\n  endpoints:\n    - {url: 'http://h', "
                                     "secret: '${HOOK}'}\n")
    section = loaded.sections["notify"]
    assert isinstance(section, Notify) and section.config.endpoints[0].url == "http://h"
    assert section.config.endpoints[0].secret.get_secret_value() == "whsec_x"
    assert not any("notify" in w for w in loaded.warnings)


def test_a_literal_secret_in_a_section_warns_and_an_absent_section_is_not_built():
    p = manager()
    loaded = load_config("f.yaml", p.registry, env={},
                         text=BASE + "notify:\n  endpoints: [{url: 'http://h', secret: s3}]\n")
    assert any("notify.endpoints[0].secret: a literal secret" in w for w in loaded.warnings)
    assert all("s3" not in w.split(":")[-1] for w in loaded.warnings)
    Notify.built.clear()
    assert load_config("f.yaml", p.registry, env={}, text=BASE).sections == {}
    assert Notify.built == []


def test_nothing_is_built_when_another_part_of_the_file_is_wrong():
    Notify.built.clear()
    with pytest.raises(ConfigError, match="workers"):
        load_config("f.yaml", manager().registry, env={},
                    text=BASE + "workers: 0\nnotify: {endpoints: []}\n")
    assert Notify.built == []


def test_without_the_plugin_the_section_is_an_unknown_key():
    with pytest.raises(ConfigError, match="notify"):
        load_config("f.yaml", build_plugin_manager(entry_points=False).registry, env={},
                    text=BASE + "notify: {endpoints: []}\n")


def test_a_section_named_like_a_setting_or_registered_twice_is_an_error():
    class Watch(Notify):
        name = "watch"

    class Bad:
        @staticmethod
        @hookimpl
        def archiver_register_sections(register):
            register(Watch)

    p = build_plugin_manager(entry_points=False, extra=[("bad", Bad)])
    with pytest.raises(ConfigError, match="plugin 'bad' registers a section named like"):
        load_config("f.yaml", p.registry, env={}, text=BASE)

    class Again:
        archiver_register_sections = SectionPlugin.archiver_register_sections

    with pytest.raises(PluginError, match="registered twice"):
        manager(("again", Again))


def test_a_failing_section_constructor_is_a_config_error_naming_the_section():
    class Broken(Notify):
        def __init__(self, config):
            raise RuntimeError("secret-value")

    class Plugin:
        @staticmethod
        @hookimpl
        def archiver_register_sections(register):
            register(Broken)

    p = build_plugin_manager(entry_points=False, extra=[("broken", Plugin)])
    with pytest.raises(ConfigError) as err:
        load_config("f.yaml", p.registry, env={}, text=BASE + "notify: {}\n")
    assert "notify: the notify plugin section failed to start: RuntimeError" in str(err.value)
    assert "secret-value" not in str(err.value)


def test_archiver_job_expiring_fires_once_per_job_and_ledger(emu, tmp_path, monkeypatch):
    calls = []

    class Recorder:
        @staticmethod
        @hookimpl
        def archiver_job_expiring(job, state, expires_in, message):
            calls.append((job.id, job.project_id, state, round(expires_in), message))

    soon = datetime.now(timezone.utc) + timedelta(hours=1)
    open_job = emu.add_job("proj_a", status="processing", expires_at=soon)["id"]
    emu.add_job("proj_a", status="processing")  # expires in weeks: no warning
    path = tmp_path / "archiver.yaml"
    path.write_text(basic_config(emu, tmp_path))
    monkeypatch.setenv("PLANGREP_API_KEY", emu.api_key)
    p = build_plugin_manager(entry_points=False, extra=[("rec", Recorder)])
    for _ in range(2):  # the second pass warns again in the log, not through the hook
        with Runtime.open(str(path), plugins=p) as rt:
            api.run(rt)
    assert len(calls) == 1
    job_id, project, state, left, message = calls[0]
    assert (job_id, project, state) == (open_job, "proj_a", "waiting")
    assert 3500 < left <= 3600 and open_job in message
