"""Discoverability (issue "At the terminal", part 7): shell completion, ``--version``,
an example at the end of every command's ``--help``, and a ``--help`` that stays fast."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import time

import click
import pytest
from cli_helpers import archiver
from click.testing import CliRunner

from archiver import __version__


def _all_commands():
    from archiver.cli import cli
    ctx = click.Context(cli)
    out = []

    def walk(group, path):
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            out.append((*path, name))
            if isinstance(cmd, click.Group):
                walk(cmd, (*path, name))

    walk(cli, ())
    return out


@pytest.mark.parametrize("path", _all_commands(), ids=" ".join)
def test_every_help_ends_with_an_example(path):
    from archiver.cli import cli
    out = CliRunner().invoke(cli, [*path, "--help"])
    assert out.exit_code == 0, out.output
    tail = out.output.rstrip().splitlines()
    assert "Examples:" in out.output, out.output
    assert tail[-1].strip().startswith(("archiver ", "eval ")), tail[-1]
    # the shared options are there after the command name too
    assert "-v, --verbose" in out.output and "-q, --quiet" in out.output


def test_the_top_help_ends_with_examples_and_stays_fast():
    started = time.monotonic()
    out = archiver("--help")
    assert out.returncode == 0
    assert out.stdout.rstrip().splitlines()[-1].strip().startswith("archiver ")
    assert "ls " in out.stdout and "completion" in out.stdout
    imported = subprocess.run([sys.executable, "-X", "importtime", "-m", "archiver", "--help"],
                              capture_output=True, text=True, timeout=60).stderr
    for heavy in ("rich", "requests", "pydantic", "boto3", "default_plugins", "sqlite3",
                  "psycopg", "celery", "kombu"):
        assert not re.search(rf"\|\s+{heavy}(\.|$)", imported, re.M), heavy
    assert time.monotonic() - started < 10  # the import list above is the real guard


def test_version_lists_python_and_the_plugins():
    out = archiver("--version")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"archiver {__version__}"
    assert lines[1].startswith(f"Python {platform.python_version()} ")
    assert "plugins:" in lines
    assert any(re.match(r"  local \S+ \(built-in, ", line) for line in lines)
    assert any(re.match(r"  plangrep \S+ \(built-in, ", line) for line in lines)


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o"), ("zsh", "compdef"),
                                           ("fish", "complete --no-files")])
def test_completion_scripts(shell, marker):
    out = archiver("completion", shell)
    assert out.returncode == 0, out.stderr
    assert marker in out.stdout and "_ARCHIVER_COMPLETE" in out.stdout


def test_completion_completes_commands_plugin_commands_and_options():
    def complete(words: str) -> list[str]:
        out = subprocess.run([sys.executable, "-m", "archiver"], capture_output=True,
                             text=True, timeout=60,
                             env={"_ARCHIVER_COMPLETE": "bash_complete", "COMP_WORDS": words,
                                  "COMP_CWORD": str(len(words.split()) - (
                                      0 if words.endswith(" ") else 1)),
                                  "PATH": "/usr/bin:/bin"})
        return [line.split(",", 1)[1] for line in out.stdout.splitlines()]

    assert {"run", "replicate"} <= set(complete("archiver r"))
    assert "verify" in complete("archiver ve")
    assert "--workers" in complete("archiver run --w")
    assert complete("archiver ls --state inc") == ["incomplete"]
