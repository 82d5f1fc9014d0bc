"""Options, plugin discovery and the README's worked example (no server needed)."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import archiver_s3
import pytest
from archiver_s3 import S3Sink, S3SinkConfig
from pydantic import ValidationError

from archiver.errors import ConfigError, PluginError
from archiver.plugins import build_plugin_manager

MiB = 1 << 20
README = Path(__file__).resolve().parents[1] / "README.md"


def test_entry_point_registers_the_s3_sink(monkeypatch):
    monkeypatch.delenv("ARCHIVER_PLUGINS", raising=False)
    monkeypatch.delenv("ARCHIVER_DISABLE_PLUGINS", raising=False)
    plugins = build_plugin_manager(entry_points=True)
    assert plugins.registry.get("sink", "s3") is S3Sink
    info = plugins.infos["s3"]
    assert not info.builtin and info.version == archiver_s3.__version__
    assert info.module == "archiver_s3.plugin" and "sink:s3" in info.components


def test_without_the_plugin_type_s3_gives_an_install_hint(monkeypatch):
    monkeypatch.setenv("ARCHIVER_DISABLE_PLUGINS", "s3")
    with pytest.raises(PluginError, match="pip install"):
        build_plugin_manager(entry_points=True).registry.get("sink", "s3")


def test_importing_the_plugin_does_not_import_boto3():
    code = ("import sys, archiver_s3.plugin; "
            "print(sorted(m for m in ('boto3', 'botocore', 'awscrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_defaults_and_sizes():
    cfg = S3SinkConfig(bucket="bkt", part_size="8MiB", multipart_threshold="32 MB")
    assert (cfg.part_size, cfg.multipart_threshold) == (8 * MiB, 32_000_000)
    default = S3SinkConfig(bucket="bkt")
    assert (default.part_size, default.multipart_threshold, default.max_parts_in_flight,
            default.checksum_algorithm) == (16 * MiB, 16 * MiB, 4, "SHA256")
    assert default.memory_bound() == 80 * MiB
    assert S3Sink(default, label="x").memory_bound.startswith("80 MiB per open writer")


@pytest.mark.parametrize("options, problem", [
    ({"part_size": 4 * MiB}, "greater than or equal"),
    ({"part_size": "16 parsecs"}, "could not interpret byte unit"),
    ({"kms_key_id": "k"}, "kms_key_id needs sse"),
    ({"sse": "aws:kms:dsse"}, "Input should be"),
    ({"checksum_algorithm": "MD5"}, "Input should be"),
    ({"object_lock": {"mode": "COMPLIANCE"}}, "exactly one"),
    ({"object_lock": {"mode": "COMPLIANCE", "retain_days": 1,
                      "retain_until": "2999-01-01"}}, "exactly one"),
    ({"object_lock": {"mode": "LEGAL", "retain_days": 1}}, "Input should be"),
    ({"object_lock": {"mode": "GOVERNANCE", "retain_until": "2001-01-01"}}, "not in the future"),
    ({"endpoint_url": "http://user:pw@127.0.0.1:9000"}, "must not contain credentials"),
    ({"endpoint_url": "ftp://x"}, "http"),
    ({"bucket": "a/b"}, "not a bucket name"),
    ({"metadata": {"sha256": "x"}}, "reserved"),
    ({"metadata": {"Owner": "x"}}, "lowercase"),
    ({"metadata": {"owner": "caf\u00e9"}}, "printable ASCII"),
    ({"tags": {f"t{i}": "v" for i in range(10)}}, "at most 9"),
    ({"tags": {"archiver-sha256": "x"}}, "reserved"),
    ({"storage_class": "cold"}, "pattern"),
    ({"secret_access_key": "x"}, "Extra inputs are not permitted"),
])
def test_bad_options(options, problem):
    with pytest.raises(ValidationError, match=re.escape(problem)):
        S3SinkConfig(**{"bucket": "bkt", **options})


def test_object_lock_dates():
    day = date.today() + timedelta(days=3)
    lock = S3SinkConfig(bucket="bkt", object_lock={"mode": "GOVERNANCE", "retain_until": day,
                                                 "legal_hold": True}).object_lock
    until = lock.retain_until_datetime()
    assert (until.date(), until.hour, until.utcoffset().total_seconds()) == (day, 0, 0)


def _readme_yaml() -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "the README has no worked example"
    return blocks[0]


def test_readme_example_is_a_valid_configuration():
    from archiver.config import load_config

    plugins = build_plugin_manager(entry_points=True)
    loaded = load_config("README.md", plugins.registry, text=_readme_yaml(),
                         env={"PLANGREP_API_KEY": "k"})
    configs = {b.label: b.config for b in loaded.sinks}
    vault = configs["vault"]
    assert isinstance(vault, S3SinkConfig) and vault.object_lock.mode == "COMPLIANCE"


def test_bad_option_in_yaml_names_its_path():
    from archiver.config import load_config

    text = _readme_yaml().replace("part_size: 16MiB", "part_size: 1MiB")
    assert text != _readme_yaml()
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.part_size"):
        load_config("README.md", build_plugin_manager(entry_points=True).registry, text=text,
                    env={"PLANGREP_API_KEY": "k"})
