"""Loading is total: broken files of every kind give a clear ConfigError within a second.

(The property-based half is tests/test_config_fuzz.py.)
"""

from __future__ import annotations

import os
import time
import tracemalloc

import pytest

from archiver.config import load_config, parse_yaml
from archiver.config_yaml import MAX_BYTES
from archiver.errors import ConfigError

VALID = ("source:\n  type: plangrep\n  api_key: ${KEY}\n"
         "sinks:\n  - name: primary\n    type: local\n    root: ./archive\n")


def refused(plugins, text=None, file="f.yaml") -> str:
    """The message, checking it came quickly and in bounded memory."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ConfigError) as exc:
            load_config(file, plugins.registry, text=text, env={"KEY": "k"})
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.monotonic() - started < 1.0
    assert peak < 32 << 20
    return str(exc.value)


@pytest.mark.parametrize("text, message", [
    ("", "f.yaml: the configuration is empty"),
    ("# nothing but a comment\n\n", "f.yaml: the configuration is empty"),
    ("- a\n- b\n", "f.yaml: the configuration must be a YAML mapping of keys (source:, sinks:, "
                   "...), not a list"),
    ("just words\n", "not a single str value"),
    ("---\na: 1\n---\nb: 2\n", "f.yaml:3: invalid YAML: but found another document"),
    ("source: {type: [unclosed\n", "f.yaml:2: invalid YAML:"),
    ("a: \x00\n", "f.yaml:1: invalid YAML: character U+0000 is not allowed"),
    ("a: 1\nb: 2001-13-01\n", "f.yaml:2: invalid YAML value: month must be in 1..12"),
    ("a: !!python/object:os.system x\n", "f.yaml:1: invalid YAML: could not determine a "
                                         "constructor"),
    ("1: x\n", "f.yaml:1: (top level): key '1' is not a string (quote it)"),
    ("? [a, b]\n: c\n", "key 'a collection' is not a string"),
    (VALID + "state_dir: a\nstate_dir: b\n", "f.yaml:9: state_dir: duplicate key (first on "
                                             "line 8)"),
    (VALID.replace("    root:", "    type: local\n    root:"), "sinks[0].type: duplicate key"),
])
def test_broken_documents(plugins, text, message):
    assert message in refused(plugins, text)


def test_a_merge_key_is_not_a_duplicate(plugins):
    text = ("x-sink: &sink {type: local, root: ./a}\n" + VALID.split("sinks:")[0] +
            "sinks:\n  - <<: *sink\n    name: one\n    root: ./b\n")
    cfg = load_config("f.yaml", plugins.registry, text=text, env={"KEY": "k"})
    assert str(cfg.sinks[0].config.root) == "b"


def test_billion_laughs_is_refused_quickly(plugins):
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]"
               for p, c in zip("abcdefgh", "bcdefghi")]
    msg = refused(plugins, "\n".join(levels) + "\n")
    assert "more than 10000 YAML nodes (aliases expanded)" in msg


def test_a_wide_alias_fan_out_is_refused(plugins):
    text = "a: &a [" + ", ".join(["x"] * 200) + "]\nb: [" + ", ".join(["*a"] * 200) + "]\n"
    assert "more than 10000 YAML nodes" in refused(plugins, text)


def test_a_recursive_alias_is_refused(plugins):
    assert "alias *a refers to a collection containing it" in refused(plugins, "a: &a [*a]\n")
    assert "alias *m refers to" in refused(plugins, "a: &m {b: {c: *m}}\n")


@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, "a: " + "[" * 100_000,
                                  "a:\n" + "".join(" " * i + "- \n" for i in range(1, 200))])
def test_deep_nesting_is_refused(plugins, text):
    assert "nest" in refused(plugins, text).lower()


def test_aliases_in_a_normal_config_work(plugins):
    text = VALID + "x-algos: &algos [sha256]\nbagit: {algorithms: *algos}\n"
    assert load_config("f.yaml", plugins.registry, text=text,
                       env={"KEY": "k"}).settings.bagit.algorithms == ["sha256"]


def test_ten_megabytes_are_refused_unread(plugins, tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(VALID + "# padding\n" * (1 << 20))  # 10 MiB of valid YAML
    msg = refused(plugins, file=str(path))
    assert msg == f"{path}: larger than 1 MiB: not a configuration file (is it the right path?)"
    assert "larger than 1 MiB" in refused(plugins, text=VALID + "#" * MAX_BYTES)


@pytest.mark.timeout(10)
def test_an_endless_file_is_read_no_further_than_the_limit(plugins):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    assert "/dev/zero: larger than 1 MiB" in refused(plugins, file="/dev/zero")


def test_not_utf8(plugins, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(VALID.replace("primary", "prim\xe4r").encode("latin-1"))
    assert refused(plugins, file=str(path)) == (
        f"{path}:5: not UTF-8 text (byte 0xe4 at offset 64); save the file as UTF-8")


def test_a_utf8_byte_order_mark_is_fine(plugins, tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID.encode())
    assert load_config(path, plugins.registry, env={"KEY": "k"}).sinks[0].label == "primary"


def test_a_directory(plugins, tmp_path):
    assert refused(plugins, file=str(tmp_path)) == \
        f"{tmp_path}: cannot read configuration: Is a directory"


def test_a_missing_file(plugins, tmp_path):
    path = tmp_path / "nope.yaml"
    assert refused(plugins, file=str(path)) == \
        f"{path}: cannot read configuration: No such file or directory"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads files whatever their mode")
def test_an_unreadable_file(plugins, tmp_path):
    path = tmp_path / "secret.yaml"
    path.write_text(VALID)
    path.chmod(0)
    try:
        assert refused(plugins, file=str(path)) == \
            f"{path}: cannot read configuration: Permission denied"
    finally:
        path.chmod(0o600)


def test_an_unreadable_file_even_as_root(plugins, tmp_path, monkeypatch):
    """Root ignores file modes, so the OS error is simulated where the file is opened."""
    import builtins
    path = tmp_path / "secret.yaml"
    path.write_text(VALID)
    real_open = builtins.open

    def deny(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    assert refused(plugins, file=str(path)) == \
        f"{path}: cannot read configuration: Permission denied"


def test_parse_yaml_keeps_its_contract():
    data, lines = parse_yaml(VALID, "f.yaml")
    assert data["sinks"][0]["root"] == "./archive"
    assert lines["sinks[0].root"] == 7 and lines["source"] == 1


def test_a_plugin_validator_bug_is_still_a_config_error(plugins):
    from pydantic import field_validator

    from archiver.components import ComponentConfig, Sink

    class Broken(Sink):
        name = "broken"

        class Config(ComponentConfig):
            size: int = 0

            @field_validator("size")
            @classmethod
            def _crash(cls, value):
                return value + "x"  # TypeError: pydantic does not wrap it

    plugins.registry.register("sink", Broken, "test")
    text = VALID.split("sinks:")[0] + "sinks:\n  - {name: b, type: broken, size: 1}\n"
    assert "sinks[0]: the sink plugin 'broken' failed to validate these options: TypeError" \
        in refused(plugins, text)
