"""Issue "At the terminal", part 1: what a user typing a config file gets told.

Each test reproduces a report: a hang, a value silently accepted, a message that did not
help. Messages are checked as the user sees them (``file:line: path: problem``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archiver.components import ComponentConfig, Sink
from archiver.config import load_config
from archiver.errors import ConfigError

SOURCE = "source:\n  type: plangrep\n  api_key: ${KEY}\n"
SINK = "sinks:\n  - name: primary\n    type: local\n    root: ./archive\n"


def load(plugins, text, env=None):
    return load_config("f.yaml", plugins.registry, text=text,
                       env={"KEY": "k"} if env is None else env)


def error(plugins, text, env=None) -> str:
    with pytest.raises(ConfigError) as exc:
        load(plugins, text, env)
    return str(exc.value)


# --------------------------------------------------------------------------- 1. hangs

@pytest.mark.timeout(10)
@pytest.mark.parametrize("text, message", [
    ("source:\n  type: plangrep\n  api_key: x\n",
     "f.yaml: sinks: missing: at least one sink is required"),
    (SINK, "f.yaml: source: missing: the source to archive from is required"),
    (SOURCE + "sinks: []\n", "f.yaml:4: sinks: at least one sink is required"),
    ("concurrency: 2\n", "f.yaml: sinks: missing"),
])
def test_a_missing_section_is_named_and_does_not_hang(plugins, text, message):
    started = time.monotonic()
    assert message in error(plugins, text)
    assert time.monotonic() - started < 1


@pytest.mark.timeout(10)
def test_a_file_without_sinks_hangs_no_more(plugins, tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("source:\n  type: plangrep\n  api_key: x\n")
    with pytest.raises(ConfigError, match="sinks: missing"):
        load_config(path, plugins.registry, env={})


# --------------------------------------------------------------------------- 2. ${ and $

@pytest.mark.parametrize("value, message", [
    ("${PLANGREP_API_KEY", "f.yaml:3: source.api_key: unterminated ${"),
    ("ab${KEY", "source.api_key: unterminated ${"),
    ("${KEY:-x}", "source.api_key: not a variable reference: write ${NAME}"),
])
def test_a_broken_reference_is_an_error_not_a_key(plugins, value, message):
    msg = error(plugins, SOURCE.replace("${KEY}", value) + SINK)
    assert message in msg
    assert "KEY:-x" not in msg  # what is written in an api_key is not repeated


def test_a_bare_dollar_variable_is_reported(plugins):
    msg = error(plugins, SOURCE + SINK.replace("./archive", "$HOME/archive"))
    assert "f.yaml:7: sinks[0].root: use ${HOME}; write $$ for a literal $" in msg


def test_dollar_dollar_and_other_dollars_stay_literal(plugins):
    cfg = load(plugins, SOURCE.replace("${KEY}", "a$$b$$${KEY}$") + SINK)
    assert cfg.source.config.api_key.get_secret_value() == "a$b$k$"


# --------------------------------------------------------------------------- 3. ~

def test_tilde_is_expanded_in_path_fields(plugins):
    text = (SOURCE + SINK.replace("./archive", "~/archive") + "state_dir: ~/state\n"
            "serve: {secrets: {per_job_dir: ~/secrets, per_job_file: '~root/s.yaml'}}\n")
    cfg = load(plugins, text)
    home = os.path.expanduser("~")
    assert str(cfg.sinks[0].config.root) == f"{home}/archive"
    assert str(cfg.settings.state_dir) == f"{home}/state"
    assert str(cfg.settings.serve.secrets.per_job_dir) == f"{home}/secrets"
    assert str(cfg.settings.serve.secrets.per_job_file) == os.path.expanduser("~root/s.yaml")


class Where(ComponentConfig):
    spool: Path | None = None


class Tape(Sink):
    name = "tape"

    class Config(ComponentConfig):
        device: Path
        extra: list[Path] = []
        where: Where = Where()
        label: str = ""


def test_tilde_is_expanded_in_any_plugins_path_fields(plugins):
    """Driven by the annotations of the component's Config: no plugin is special."""
    plugins.registry.register("sink", Tape, "test")
    text = SOURCE + ("sinks:\n  - {name: t, type: tape, device: ~/dev, extra: [~/a, b],\n"
                     "     where: {spool: ~/spool}, label: ~/not-a-path}\n")
    cfg = load(plugins, text).sinks[0].config
    home = os.path.expanduser("~")
    assert (str(cfg.device), [str(p) for p in cfg.extra], str(cfg.where.spool), cfg.label) == \
        (f"{home}/dev", [f"{home}/a", "b"], f"{home}/spool", "~/not-a-path")


def test_the_core_config_imports_no_plugin():
    code = ("import sys, archiver.config; bad = [m for m in sys.modules if m.startswith("
            "('archiver.default_plugins', 'archiver_s3', 'archiver_gcs'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_tilde_of_an_unknown_user_is_an_error(plugins):
    msg = error(plugins, SOURCE + SINK.replace("./archive", "~no_such_user_x/a"))
    assert "sinks[0].root: cannot expand ~no_such_user_x: no user 'no_such_user_x'" in msg


def test_tilde_elsewhere_is_left_alone(plugins):
    cfg = load(plugins, SOURCE.replace("${KEY}", "~k") + SINK.replace("./archive", "./a~b"))
    assert cfg.source.config.api_key.get_secret_value() == "~k"
    assert str(cfg.sinks[0].config.root) == "a~b"


# --------------------------------------------------------------------------- 4. secrets, roots

def test_a_literal_api_key_is_a_warning(plugins):
    cfg = load(plugins, SOURCE.replace("${KEY}", "plk_live_123") + SINK)
    assert cfg.warnings == ["f.yaml:3: source.api_key: a literal secret in the config file; "
                            "use ${PLANGREP_API_KEY}"]
    assert "plk_live_123" not in " ".join(cfg.warnings)


def test_secrets_from_the_environment_give_no_warning(plugins):
    cfg = load(plugins, SOURCE + SINK + "serve: {secrets: {default: '${KEY}'}}\n")
    assert cfg.warnings == []


def test_literal_webhook_secret_and_ledger_password_are_warnings(plugins):
    cfg = load(plugins, SOURCE + SINK + "serve: {secrets: {default: wss_x}}\n"
               "ledger: {url: 'postgresql://u:pw@db/archiver'}\n")
    assert [w.split(": ")[1] for w in cfg.warnings] == ["serve.secrets.default", "ledger.url"]
    assert "pw@" not in " ".join(cfg.warnings)


@pytest.mark.parametrize("second", ["./archive", "archive/", "./x/../archive"])
def test_two_sinks_sharing_one_root_are_an_error(plugins, second):
    text = SOURCE + SINK + f"  - name: second\n    type: local\n    root: {second}\n"
    msg = error(plugins, text)
    assert "f.yaml:10: sinks[1].root: the same directory" in msg
    assert "as sinks[0].root: two sinks must not share one" in msg


def test_two_sinks_sharing_one_bucket_prefix_are_an_error():
    pytest.importorskip("archiver_s3")
    from archiver.plugins import build_plugin_manager
    text = SOURCE + ("sinks:\n  - {name: a, type: s3, bucket: bkt, prefix: p/}\n"
                     "  - {name: b, type: s3, bucket: bkt, prefix: /p}\n"
                     "  - {name: c, type: s3, bucket: bkt, prefix: q}\n")
    with pytest.raises(ConfigError) as exc:
        load_config("f.yaml", build_plugin_manager(entry_points=True).registry, text=text,
                    env={"KEY": "k"})
    msg = str(exc.value)
    assert "f.yaml:6: sinks[1].bucket: the same bucket and prefix (bkt/p) as sinks[0].bucket" \
        in msg
    assert "sinks[2]" not in msg


# --------------------------------------------------------------------------- 5. did you mean

@pytest.mark.parametrize("text, message", [
    (SOURCE + SINK.replace("root:", "rot:"), "f.yaml:7: sinks[0].rot: unknown key "
                                             "(did you mean 'root'?)"),
    (SOURCE + SINK + "lease: {tll: 5}\n", "lease.tll: unknown key (did you mean 'ttl'?)"),
    (SOURCE + SINK.replace("sinks:", "sink:"), "f.yaml:4: sink: unknown key (did you mean "
                                               "'sinks'?)"),
    (SOURCE + SINK + "workres: 2\n", "workres: unknown key (did you mean 'workers'?)"),
    (SOURCE.replace("api_key", "apikey") + SINK, "source.apikey: unknown key (did you mean "
                                                 "'api_key'?)"),
    (SOURCE + SINK.replace("name:", "nmae:"), "sinks[0].nmae: unknown key (did you mean "
                                              "'name'?)"),
    (SOURCE + SINK + "colour: blue\n", "colour: unknown key\n"),
])
def test_unknown_keys_suggest_the_nearest(plugins, text, message):
    assert message in error(plugins, text) + "\n"


# --------------------------------------------------------------------------- 6. sizes

@pytest.mark.parametrize("extra, message", [
    ("chunk_size: 1000\n", "chunk_size: must be at least 4 KiB (got 1000 bytes)"),
    ("chunk_size: 1GiB\n", "chunk_size: must be at most 64 MiB (got 1 GiB)"),
    ("serve: {max_body_bytes: 65MiB}\n", "serve.max_body_bytes: must be at most 64 MiB"),
])
def test_sizes_are_shown_as_sizes(plugins, extra, message):
    msg = error(plugins, SOURCE + SINK + extra)
    assert message in msg and "67108864" not in msg


def test_plugin_sizes_are_shown_as_sizes():
    pytest.importorskip("archiver_s3")
    from archiver.plugins import build_plugin_manager
    text = SOURCE + "sinks:\n  - {name: a, type: s3, bucket: bkt, part_size: 1MiB}\n"
    with pytest.raises(ConfigError) as exc:
        load_config("f.yaml", build_plugin_manager(entry_points=True).registry, text=text,
                    env={"KEY": "k"})
    assert "sinks[0].part_size: must be at least 5 MiB (got 1 MiB)" in str(exc.value)
    assert "5242880" not in str(exc.value)


def test_every_problem_is_listed_in_file_order(plugins):
    text = SOURCE + SINK.replace("root:", "rot:") + "workers: 0\nchunk_size: 1\n"
    lines = error(plugins, text).splitlines()[1:]
    assert [line.split(": ")[1] for line in lines] == [
        "sinks[0].root", "sinks[0].rot", "workers", "chunk_size"]
