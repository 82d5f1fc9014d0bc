"""``archiver config check``: validate the file; ``--online`` also tries the API key with
one request and runs every sink's preflight, all of them, reporting every failure."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .commands import EXIT_CONFIG, EXIT_FATAL, config_option, examples, fail, json_option


@click.group("config", epilog=examples("archiver config check --online"))
def config_group() -> None:
    """Validate configuration files."""


def _check(kind: str, name: str, type_: str, fn) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": kind, "name": name, "type": type_, "ok": True,
                             "detail": None, "error": None}
    try:
        entry["detail"] = fn()
    except Exception as exc:  # every failure is reported, whatever the plugin raised
        from .errors import ArchiverError
        entry["ok"] = False
        text = str(exc) if isinstance(exc, ArchiverError) else f"{type(exc).__name__}: {exc}"
        entry["error"] = text or type(exc).__name__
    return entry


def _source_check(loaded) -> str | None:
    built = loaded.source
    source = built.cls(built.config)
    try:
        return source.preflight()
    finally:
        source.close()


def _sink_check(built) -> str | None:
    sink = built.cls(built.config, label=built.label)
    try:
        sink.preflight()
        return "preflight passed"
    finally:
        sink.close()


def online_checks(loaded) -> list[dict[str, Any]]:
    """The source's check and every sink's preflight, concurrently (one slow or dead
    endpoint does not hold up the others); in configuration order."""
    from concurrent.futures import ThreadPoolExecutor
    jobs = [("source", loaded.source.cls.name, loaded.source.cls.name,
             lambda: _source_check(loaded))]
    jobs += [("sink", b.label, b.cls.name, (lambda b=b: _sink_check(b))) for b in loaded.sinks]
    with ThreadPoolExecutor(len(jobs), thread_name_prefix="archiver-check") as pool:
        return list(pool.map(lambda j: _check(*j), jobs))


@config_group.command("check", epilog=examples(
    "archiver config check                       # ./archiver.yaml, no I/O",
    "archiver config check -c prod.yaml --online  # the API key and every sink",
    "archiver config check --online --json"))
@config_option
@click.option("--online", is_flag=True,
              help="Also try the API key (one request) and run every sink's preflight.")
@json_option
def config_check(config_file: str, online: bool, as_json: bool) -> None:
    """Validate FILE without any network or disk I/O (unless --online)."""
    from .cli_logging import remember_secrets
    from .errors import ConfigError, PluginError
    from .runtime import load_config_file
    try:
        _, loaded = load_config_file(config_file)
    except (ConfigError, PluginError) as exc:
        if as_json:
            click.echo(json.dumps({"file": config_file, "ok": False, "errors": [str(exc)],
                                   "exit_code": EXIT_CONFIG}, indent=2))
            sys.exit(EXIT_CONFIG)
        fail(str(exc))
    remember_secrets(loaded)
    checks = online_checks(loaded) if online else []
    failed = [c for c in checks if not c["ok"]]
    code = EXIT_FATAL if failed else 0
    if as_json:
        click.echo(json.dumps({
            "file": config_file, "ok": not failed, "source": loaded.source.cls.name,
            "sinks": [{"name": b.label, "type": b.cls.name} for b in loaded.sinks],
            "warnings": loaded.warnings, "checks": checks, "exit_code": code}, indent=2))
        sys.exit(code)
    from .commands import warn
    for warning in loaded.warnings:
        warn(warning)
    names = ", ".join(f"{b.label} ({b.cls.name})" for b in loaded.sinks)
    click.echo(f"{config_file}: OK; source {loaded.source.cls.name}, sinks {names}")
    for c in checks:
        what = f"{c['kind']} {c['name']}" + (f" ({c['type']})" if c["kind"] == "sink" else "")
        if c["ok"]:
            click.echo(f"  ok      {what}" + (f": {c['detail']}" if c["detail"] else ""))
        else:
            click.echo(f"  FAILED  {what}: {c['error']}", err=True)
    if failed:
        click.echo(f"error: {len(failed)} of {len(checks)} online check(s) failed", err=True)
    sys.exit(code)


__all__ = ["config_check", "config_group", "online_checks"]
