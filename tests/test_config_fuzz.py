"""Config loading is total: any text gives a LoadedConfig or a ConfigError, quickly.

Three generators: arbitrary text, arbitrary YAML-able structures (dumped with
``yaml.safe_dump``), and mutations of a valid config (deleted, duplicated or swapped
lines, swapped characters, values replaced by other types).
"""

from __future__ import annotations

import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archiver.config import LoadedConfig, load_config
from archiver.errors import ConfigError
from archiver.plugins import build_plugin_manager

GOOD = """\
source:
  type: plangrep
  base_url: http://127.0.0.1:9/api/open/v1
  api_key: ${KEY}
  projects: [proj_1]
transforms:
  - type: checksum
    algorithms: [sha256]
sinks:
  - name: primary
    type: local
    root: ./archive
  - name: second
    type: local
    root: ~/archive2
    transforms:
      - type: decompress
state_dir: ./.archiver
concurrency: 8
workers: 2
chunk_size: 1MiB
lease: {ttl: 60, heartbeat: 20, max_lost: 3}
ledger: {outage_tolerance: 1m}
bagit: {info: {Source-Organization: Acme}}
watch: {poll_interval: 30s}
serve: {port: 8787, max_body_bytes: 1MiB, secrets: {default: "${KEY}"}}
"""

REGISTRY = build_plugin_manager(entry_points=False).registry
ENV = {"KEY": "sekrit", "HOME": "/home/someone"}
FUZZ = settings(max_examples=150, deadline=1000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def check(text: str) -> None:
    """load_config returns or raises ConfigError, within a second."""
    started = time.monotonic()
    try:
        assert isinstance(load_config("fuzz.yaml", REGISTRY, env=ENV, text=text), LoadedConfig)
    except ConfigError as exc:
        assert str(exc).strip()
    assert time.monotonic() - started < 1.0


def test_the_seed_config_is_valid():
    assert load_config("fuzz.yaml", REGISTRY, env=ENV, text=GOOD).settings.workers == 2


# Words of the real vocabulary make random structures reach deeper validation code.
WORDS = st.sampled_from(["source", "sinks", "transforms", "type", "name", "root", "plangrep",
                         "local", "checksum", "api_key", "state_dir", "workers", "lease",
                         "ttl", "heartbeat", "ledger", "url", "chunk_size", "bagit", "info",
                         "serve", "secrets", "watch", "${KEY}", "$HOME", "~/x", "${", "$$",
                         "1MiB", "5m", "sqlite:///x", "<<"])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | WORDS
STRUCTURES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5)
                          | st.dictionaries(WORDS | st.text(max_size=10), inner, max_size=6),
                          max_leaves=40)


@pytest.mark.timeout(60)
@FUZZ
@given(st.text(max_size=400))
def test_random_text(text):
    check(text)


@pytest.mark.timeout(60)
@FUZZ
@given(STRUCTURES)
def test_random_yaml_structures(value):
    check(yaml.safe_dump(value, allow_unicode=True))


@pytest.mark.timeout(60)
@FUZZ
@given(st.fixed_dictionaries({"source": STRUCTURES, "sinks": st.lists(
    st.dictionaries(WORDS, STRUCTURES, max_size=5), max_size=3)}, optional={
    "lease": STRUCTURES, "ledger": STRUCTURES, "workers": SCALARS, "state_dir": SCALARS}))
def test_random_structures_of_the_right_shape(value):
    check(yaml.safe_dump(value, allow_unicode=True))


def _mutate(data: st.DataObject) -> str:
    lines = GOOD.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["delete", "duplicate", "swap_lines", "swap_chars",
                                        "retype", "insert"]))
        i = data.draw(st.integers(0, len(lines) - 1))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap_lines":
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "swap_chars" and len(lines[i]) > 2:
            k = data.draw(st.integers(0, len(lines[i]) - 2))
            s = lines[i]
            lines[i] = s[:k] + s[k + 1] + s[k] + s[k + 2:]
        elif op == "retype" and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            value = data.draw(SCALARS | STRUCTURES)
            dumped = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
            lines[i] = f"{key}: {dumped.removesuffix('...').strip()}\n"
        elif op == "insert":
            lines.insert(i, data.draw(st.text(max_size=20)) + "\n")
    return "".join(lines)


@pytest.mark.timeout(60)
@FUZZ
@given(st.data())
def test_mutated_valid_config(data):
    check(_mutate(data))
