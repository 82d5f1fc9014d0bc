"""The ``dispatch:``/``celery:`` configuration: errors name the YAML path and never show
the broker's or the ledger's password; the worker app is built from ``ARCHIVER_CONFIG``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from archiver.errors import ConfigError
from archiver.runtime import load_config_file

PG = "postgresql://archiver:pg-secret-123@127.0.0.1:5432/test"


def config(tmp_path, body: str) -> str:
    path = tmp_path / "archiver.yaml"
    path.write_text(textwrap.dedent("""\
        source: {type: plangrep, base_url: "http://127.0.0.1:9/api/open/v1", api_key: k}
        sinks: [{name: primary, type: local, root: ./archive}]
        """) + textwrap.dedent(body))
    return str(path)


def problems(path: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config_file(path)
    return str(exc.value)


def test_celery_dispatch_loads_with_a_postgres_ledger(tmp_path):
    path = config(tmp_path, f"""\
        ledger: {{url: "{PG}"}}
        dispatch: {{mode: celery, max_outstanding: 50}}
        celery: {{broker_url: "redis://:broker-secret-9@127.0.0.1:6379/0", queue: jobs}}
        """)
    _, loaded = load_config_file(path)
    assert loaded.dispatcher is not None and loaded.dispatcher.path == "celery"
    assert loaded.dispatcher.config.queue == "jobs"
    assert loaded.dispatcher.config.transport == "redis"
    assert "broker-secret-9" not in repr(loaded.dispatcher.config)
    assert "broker-secret-9" not in repr(loaded.dispatcher.cls(loaded.dispatcher.config))


def test_celery_dispatch_with_the_sqlite_ledger_is_an_error_naming_dispatch_mode(tmp_path):
    msg = problems(config(tmp_path, """\
        dispatch: {mode: celery}
        celery: {broker_url: "redis://127.0.0.1:6379/0"}
        """))
    assert "dispatch.mode: mode 'celery' needs a ledger that every worker host reaches" \
        in msg, msg
    assert "not sqlite" in msg


def test_a_missing_or_wrong_broker_url_names_celery_broker_url(tmp_path):
    msg = problems(config(tmp_path, f"""\
        ledger: {{url: "{PG}"}}
        dispatch: {{mode: celery}}
        """))
    assert "celery.broker_url: missing" in msg, msg
    msg = problems(config(tmp_path, f"""\
        ledger: {{url: "{PG}"}}
        dispatch: {{mode: celery}}
        celery: {{broker_url: "http://user:broker-secret-9@example/x", prefetch: 4}}
        """))
    assert "celery.broker_url: must be a Redis or RabbitMQ URL" in msg, msg
    assert "celery.prefetch: unknown key" in msg, msg
    assert "broker-secret-9" not in msg and "pg-secret-123" not in msg


def test_an_unknown_mode_lists_the_known_ones(tmp_path):
    msg = problems(config(tmp_path, "dispatch: {mode: kafka}\n"))
    assert "dispatch.mode: unknown dispatch mode 'kafka' (known: celery)" in msg, msg


def test_a_celery_section_is_checked_even_in_local_mode(tmp_path):
    msg = problems(config(tmp_path, "celery: {broker_url: 42, type: celery}\n"))
    assert "celery.type: is not an option here" in msg, msg
    assert "celery.broker_url" in msg, msg


def test_workers_beside_celery_dispatch_is_refused(tmp_path):
    path = config(tmp_path, f"""\
        ledger: {{url: "{PG}"}}
        dispatch: {{mode: celery}}
        celery: {{broker_url: "redis://127.0.0.1:6379/0"}}
        workers: 2
        """)
    out = subprocess.run([sys.executable, "-m", "archiver", "watch", "-c", path],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "workers: local worker processes do not run beside dispatch.mode 'celery'" \
        in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "pg-secret-123" not in out.stderr


def test_the_worker_app_needs_archiver_config(tmp_path):
    env_less = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "archiver_celery", "inspect",
                          "ping"], capture_output=True, text=True, timeout=60, env=env_less)
    assert out.returncode == 2
    assert "ARCHIVER_CONFIG is not set" in out.stderr and "Traceback" not in out.stderr
    local = config(tmp_path, "")
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "archiver_celery", "inspect",
                          "ping"], capture_output=True, text=True, timeout=60,
                         env={**env_less, "ARCHIVER_CONFIG": local})
    assert out.returncode == 2
    assert "Celery workers need dispatch.mode: celery" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
