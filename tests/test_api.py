"""The Python API (``archiver.api``) as an Airflow or Dagster task would use it: no output,
no exit, reports and exceptions instead."""

from __future__ import annotations

import pytest
from cli_helpers import write_config

from archiver import api
from archiver.discovery import NoConfig
from archiver.errors import ConfigError, LedgerError


@pytest.fixture
def cfg(emu, tmp_path, monkeypatch):
    emu.load_demo()
    monkeypatch.setenv("PLANGREP_API_KEY", emu.api_key)
    return write_config(emu, tmp_path)


def test_a_task_runs_archives_and_reads_status(cfg, emu, capsys):
    with api.open_config(str(cfg)) as rt:
        report = api.run(rt)
        assert report.exit_code == 0 and len(report.archived) == 3
        assert report.elapsed > 0 and report.as_dict()["elapsed_seconds"] > 0
        again = api.archive(rt, ["job_demo_tower_ifc", "job_nope"])
        assert again.archived == ["job_demo_tower_ifc"] and again.objects_written == 0
        assert list(again.unknown) == ["job_nope"] and again.exit_code == 5
        status = api.status(rt)
        assert status["jobs"]["archived"] == 3 and status["generated_at"].endswith("Z")
        assert api.status(rt, "job_nope")["job"] is None
        assert api.status(rt, "job_demo_tower_ifc")["job"]["state"] == "archived"
        rows = api.jobs(rt, states=["archived"])
        assert sorted(r["job_id"] for r in rows) == [
            "job_demo_school_plans", "job_demo_tower_ifc", "job_demo_tower_rev_b"]
    assert capsys.readouterr() == ("", "")  # a library prints nothing


def test_the_config_is_found_as_the_command_line_finds_it(cfg, monkeypatch):
    monkeypatch.chdir(cfg.parent)
    with api.open_config() as rt:
        assert rt.loaded.file.endswith("archiver.yaml")
    monkeypatch.chdir(cfg.parent.parent)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(cfg.parent / "none"))
    monkeypatch.delenv("ARCHIVER_CONFIG", raising=False)
    with pytest.raises(NoConfig):
        api.open_config()


def test_failures_are_exceptions_or_reports(cfg, tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sinks: []\n")
    with pytest.raises(ConfigError):
        api.open_config(str(bad))
    with pytest.raises(LedgerError, match="no ledger at"):
        api.open_config(str(cfg), create=False)
    monkeypatch.setenv("PLANGREP_API_KEY", "pk_wrong")
    with api.open_config(str(cfg)) as rt:
        report = api.run(rt)
    assert report.exit_code == 3 and "refused" in report.fatal


def test_progress_events_reach_a_callback(cfg):
    seen: list[str] = []
    with api.open_config(str(cfg), on_progress=lambda kind, data: seen.append(kind)) as rt:
        api.run(rt)
    assert seen.count("job") == 3 and "artifact" in seen
