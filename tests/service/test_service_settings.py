"""The ``watch:`` and ``serve:`` sections of the YAML."""

from __future__ import annotations

import textwrap

import pytest

from archiver.config import load_config
from archiver.errors import ConfigError

BASE = """\
source:
  type: plangrep
  api_key: ${KEY}
sinks:
  - name: primary
    type: local
    root: ./archive
"""


def load(plugins, extra: str = "", env=None):
    text = BASE + textwrap.dedent(extra)
    return load_config("archiver.yaml", plugins.registry, text=text,
                       env={"KEY": "k", **(env or {})})


def test_defaults_keep_old_configs_valid(plugins):
    s = load(plugins).settings
    assert (s.watch.poll_interval, s.watch.expiry_warning, s.watch.grace_period) == \
        (30, 86400, 30)
    assert (s.serve.host, s.serve.timestamp_tolerance, s.serve.insecure_accept_unsigned) == \
        ("127.0.0.1", 300, False)
    assert s.serve.secrets.default is None


def test_durations_and_secrets(plugins):
    s = load(plugins, """\
        watch: {poll_interval: 1m, expiry_warning: 36h, grace_period: 10s}
        serve:
          port: 9000
          max_body_bytes: 64KiB
          timestamp_tolerance: 2m
          secrets: {default: "${HOOK}", per_job_dir: ./secrets}
        """, env={"HOOK": "wss_very_secret"}).settings
    assert (s.watch.poll_interval, s.watch.expiry_warning, s.watch.grace_period) == \
        (60, 36 * 3600, 10)
    assert s.serve.timestamp_tolerance == 120 and s.serve.port == 9000
    assert s.serve.max_body_bytes == 65536
    assert s.serve.secrets.default.get_secret_value() == "wss_very_secret"
    assert "wss_very_secret" not in repr(s) and "wss_very_secret" not in str(s.model_dump())


@pytest.mark.parametrize("extra, where, what", [
    ("watch: {poll_interval: 4}\n", "watch.poll_interval", "at least 5 seconds"),
    ("watch: {poll_interval: 2s}\n", "watch.poll_interval", "at least 5 seconds"),
    ("watch: {expiry_warning: soon}\n", "watch.expiry_warning", "not a duration"),
    ("serve: {queue_size: 0}\n", "serve.queue_size", "greater than or equal to 1"),
    ("serve: {secrets: {defualt: x}}\n", "serve.secrets.defualt", "unknown key"),
    ("serve: {path: no-slash}\n", "serve.path", "pattern"),
    ("serve: {secrets: {default: '${UNSET_HOOK}'}}\n", "serve.secrets.default",
     "UNSET_HOOK is not set"),
])
def test_bad_values_name_the_yaml_path(plugins, extra, where, what):
    with pytest.raises(ConfigError) as err:
        load(plugins, extra)
    assert "archiver.yaml:" in str(err.value) and where in str(err.value)
    assert what in str(err.value)
