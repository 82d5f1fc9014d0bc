"""Shared fixtures: a running emulator and a config file writer."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from archiver.plugins import build_plugin_manager
from archiver.testing.emulator import Emulator


@pytest.fixture
def emu():
    with Emulator() as e:
        yield e


@pytest.fixture
def plugins():
    return build_plugin_manager(entry_points=False)


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a YAML config (dedented) into tmp_path and return its path."""

    def write(text: str, name: str = "archiver.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
