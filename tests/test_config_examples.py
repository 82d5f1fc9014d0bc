"""Every example in config/ is a valid configuration (with the S3 and GCS plugins)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from archiver.config import load_config
from archiver.plugins import build_plugin_manager

EXAMPLES = sorted((Path(__file__).parent.parent / "config").glob("*.yaml"))


def test_the_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"local.yaml", "s3-gcs.yaml", "workers.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path):
    pytest.importorskip("archiver_s3")
    pytest.importorskip("archiver_gcs")
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", path.read_text()))
    loaded = load_config(path, build_plugin_manager(entry_points=True).registry,
                         env={name: f"dummy-{name.lower()}" for name in names})
    assert loaded.sinks and loaded.source.cls.name == "plangrep"
    # Examples teach ${VAR} for secrets: none may draw a literal-secret warning.
    assert loaded.warnings == []
