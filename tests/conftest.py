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


def basic_config(emu, tmp_path: Path, extra_sink: str = "", top: str = "") -> str:
    return textwrap.dedent(f"""\
        source:
          type: plangrep
          base_url: {emu.base_url}
          api_key: ${{PLANGREP_API_KEY}}
          backoff_base: 0.01
        transforms:
          - type: checksum
            algorithms: [sha256, md5]
        sinks:
          - name: primary
            type: local
            root: {tmp_path / 'archive'}
        state_dir: {tmp_path / 'state'}
        concurrency: 4
        """) + extra_sink + top
