"""``archiver`` as users run it with ``ledger: {url: postgresql://…}``: migrate, run
(one process and ``--workers 2``), status, ledger status; real processes, the emulator as
the source. And the command line's help imports no database driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from archiver.ledger.chainrules import verify_chain
from archiver.testing.configs import basic_config
from archiver.testing.emulator import Emulator

SECRET = "pw_in_the_url_77"
DEMO = {"archived": 3, "nothing_to_store": 3, "waiting": 1}  # the emulator's demo jobs


@pytest.fixture
def emu():
    with Emulator() as e:
        yield e


def archiver(*args, env: dict | None = None, timeout: float = 180):
    full = {k: v for k, v in os.environ.items()
            if k not in ("ARCHIVER_CONFIG", "ARCHIVER_LOG_FORMAT")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "archiver", *map(str, args)],
                          capture_output=True, text=True, env=full, timeout=timeout)


def config(emu, tmp_path):
    """A config whose ledger URL comes from ``$TEST_LEDGER_URL`` (a SecretStr)."""
    path = tmp_path / "archiver.yaml"
    path.write_text(basic_config(emu, tmp_path, top=textwrap.dedent("""\
        ledger:
          url: ${TEST_LEDGER_URL}
        """)))
    return path


def with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")


def test_migrate_run_and_status(emu, tmp_path, pg_url):
    emu.load_demo()
    cfg = config(emu, tmp_path)
    env = {"PLANGREP_API_KEY": emu.api_key, "TEST_LEDGER_URL": with_password(pg_url)}
    refused = archiver("run", "-c", cfg, env=env)
    assert refused.returncode == 2, refused.stderr
    assert "run `archiver ledger migrate -c FILE`" in refused.stderr
    assert emu.count(route="artifact") == 0  # refused before any work
    status = archiver("ledger", "status", "-c", cfg, "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["version"] == 0
    migrated = archiver("ledger", "migrate", "-c", cfg, env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "applied 0001_initial, 0002_claims, 0003_budgets; schema version 3" in migrated.stdout
    run = archiver("run", "-c", cfg, "--json", env=env)
    assert run.returncode == 0, run.stderr
    archived = json.loads(run.stdout)["archived"]
    assert len(archived) == 3
    status = archiver("status", "-c", cfg, "--json", env=env)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["jobs"] == DEMO and doc["sinks"]["primary"]["objects"] > 0
    human = archiver("ledger", "status", "-c", cfg, env=env)
    assert human.returncode == 0 and "ledger: postgresql postgresql://127.0.0.1" in human.stdout
    assert "schema: version 3 of 3 known (up to date)" in human.stdout
    for out in (refused, status, migrated, run, human):
        assert SECRET not in out.stdout + out.stderr
    again = archiver("run", "-c", cfg, "--json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["archived"] == []
    _chain_ok(pg_url)


def test_run_with_two_workers(emu, tmp_path, ledger_url):
    emu.load_demo()
    from archiver.testing.emulator import ArtifactSpec
    emu.add_project(project_id="proj_pg", name="PG")
    for i in range(6):
        emu.add_job("proj_pg", artifacts=[ArtifactSpec(path=f"a{i}.bin", size=2000 + i)])
    cfg = config(emu, tmp_path)
    env = {"PLANGREP_API_KEY": emu.api_key, "TEST_LEDGER_URL": ledger_url}
    run = archiver("run", "-c", cfg, "--workers", "2", "--json", env=env)
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)["archived"]) == 9
    status = json.loads(archiver("status", "-c", cfg, "--json", env=env).stdout)
    assert status["jobs"] == {**DEMO, "archived": 9}
    workers = json.loads(archiver("ledger", "status", "-c", cfg, "--json", env=env).stdout)
    assert workers["workers"] == []  # both unregistered when they ended
    _chain_ok(ledger_url)


def _chain_ok(url: str) -> None:
    from archiver_postgres import PostgresReadOnlyLedger
    led = PostgresReadOnlyLedger(url)
    try:
        brk, n = verify_chain(led.audit_rows())
        assert brk is None and n > 0, brk
    finally:
        led.close()


def test_help_and_the_plugin_manager_import_no_driver():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "archiver", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    modules = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert not {m for m in modules if m.split(".")[0] in ("psycopg", "psycopg_pool", "celery")}
    code = ("import sys; from archiver.plugins import build_plugin_manager; "
            "from archiver.ledger import SCHEMES; build_plugin_manager(); "
            "print(sorted(SCHEMES), sorted(m for m in ('psycopg', 'psycopg_pool', 'celery')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "['postgres', 'postgresql', 'sqlite'] []"
