"""Built-in plugin: ``archiver ledger status``, ``migrate`` and ``workers``.

* ``status``: the backend, where the ledger is (never a password), its schema version
  against the newest this archiver knows, pending migrations, and the registered workers
  with their last heartbeat and the jobs they hold. It opens the ledger read-only: it
  neither creates nor upgrades anything.
* ``workers``: one line per registered worker: id, host, pid, heartbeat age, alive or
  stale, and the jobs it holds with their lease's end (read-only, like ``status``).
* ``migrate``: apply pending migrations. SQLite upgrades itself whenever it is opened, so
  this is for explicit upgrades (before a fleet of workers starts; ``--dry-run`` lists what
  would be applied) and for backends that never migrate implicitly (PostgreSQL).

Both read only the ``ledger:`` section and ``state_dir`` of the configuration and need no
secret of the source. Exit codes: 0 done; 2 bad configuration, no ledger there, or a
schema newer than this archiver knows (the message says which).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from datetime import datetime, timezone

import click

from ..commands import config_option, examples, json_option
from ..hookspecs import hookimpl


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _settings(config_file: str):
    from ..errors import ConfigError, PluginError
    from ..runtime import load_config_file
    try:
        _, loaded = load_config_file(config_file, require_env=False)
    except (ConfigError, PluginError) as exc:
        _fail(str(exc))
    return loaded.settings


def _open(settings, **kw):
    from ..errors import LedgerError
    from ..ledger import open_ledger
    try:
        return open_ledger(settings, create=False, **kw)
    except LedgerError as exc:  # LedgerMissing, LedgerSchemaError, a plugin missing
        _fail(str(exc))


def _read_only(settings, read):
    """``read(ledger)`` on the ledger opened read-only (it creates and upgrades nothing)."""
    led = _open(settings, read_only=True)
    try:
        return read(led)
    finally:
        led.close()


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _ago(ts: float | None, now: float) -> str:
    return "no heartbeat" if ts is None else f"heartbeat {max(0.0, now - ts):.0f}s ago"


def status_document(ledger) -> dict:
    """``schema_info()`` plus the workers (what ``ledger status --json`` prints)."""
    now = time.time()
    info = dict(ledger.schema_info())
    info["workers"] = [{"worker_id": w.worker_id, "host": w.host, "pid": w.pid,
                        "started": w.started, "heartbeat_at": w.heartbeat_at,
                        "heartbeat_age": None if w.heartbeat_at is None
                        else round(now - w.heartbeat_at, 3), "jobs": list(w.jobs)}
                       for w in ledger.workers()]
    return info


def workers_document(ledger, ttl: float, now: float | None = None) -> list[dict]:
    """The registered workers as ``ledger workers --json`` prints them. A worker is
    ``alive`` while its heartbeat is at most ``ttl`` (``lease.ttl``) old and, on this
    host, its pid runs; else ``stale`` (dead, hung, or its host's clock is off)."""
    from ..ledger import pid_alive
    now = time.time() if now is None else now
    this_host = socket.gethostname()
    out = []
    for w in ledger.workers():
        age = None if w.heartbeat_at is None else round(max(0.0, now - w.heartbeat_at), 3)
        alive = (age is not None and age <= ttl
                 and (w.host != this_host or w.pid is None or pid_alive(w.pid)))
        leases = w.leases or tuple((j, None) for j in w.jobs)
        out.append({"worker_id": w.worker_id, "host": w.host, "pid": w.pid,
                    "started": w.started, "heartbeat_at": w.heartbeat_at,
                    "heartbeat_age": age, "alive": alive,
                    "jobs": [{"job_id": j, "lease_until": until,
                              "lease_left": None if until is None else round(until - now, 3)}
                             for j, until in leases]})
    return out


def _worker_line(w: dict) -> str:
    age = "no heartbeat" if w["heartbeat_age"] is None else \
        f"heartbeat {w['heartbeat_age']:.0f}s ago"
    held = ", ".join(f"{j['job_id']} (lease until {_when(j['lease_until'])})"
                     if j["lease_until"] is not None else j["job_id"] for j in w["jobs"])
    return (f"{w['worker_id']}  host {w['host']}  pid {w['pid']}  {age}  "
            f"{'alive' if w['alive'] else 'stale'}  holds {held or 'no jobs'}")


def _schema_line(info: dict) -> str:
    line = f"schema: version {info['version']} of {info['known_version']} known"
    if info["pending"]:
        line += (f"; pending: {', '.join(info['pending'])} (applied by `archiver ledger "
                 "migrate`, or for SQLite on the next open for writing)")
    else:
        line += " (up to date)"
    return line


@hookimpl
def archiver_register_commands(cli) -> None:
    @cli.group(epilog=examples("archiver ledger status", "archiver ledger migrate --dry-run"))
    def ledger() -> None:
        """The ledger: schema version, migrations, workers."""

    @ledger.command(epilog=examples("archiver ledger status",
                                    "archiver ledger status --json | jq .workers"))
    @config_option
    @json_option
    def status(config_file: str, as_json: bool) -> None:
        """Backend, location, schema version, pending migrations, workers."""
        doc = _read_only(_settings(config_file), status_document)
        if as_json:
            click.echo(json.dumps(doc, indent=2, default=str))
            return
        now = time.time()
        click.echo(f"ledger: {doc['backend']} {doc['location']}")
        click.echo(_schema_line(doc))
        for m in doc["migrations"]:
            click.echo(f"  {m['name']} sha256 {m['sha256'][:16]}… applied "
                       f"{_when(m['applied_at'])}")
        if not doc["workers"]:
            click.echo("workers: none registered")
        for w in doc["workers"]:
            held = ", ".join(w["jobs"]) or "no jobs"
            click.echo(f"worker {w['worker_id']} (host {w['host']}, pid {w['pid']}): "
                       f"{_ago(w['heartbeat_at'], now)}; holds {held}")

    @ledger.command(epilog=examples("archiver ledger workers",
                                    "archiver ledger workers --json | jq '.[] | select(.alive"
                                    " | not)'"))
    @config_option
    @json_option
    def workers(config_file: str, as_json: bool) -> None:
        """Registered workers: heartbeat, alive or stale, jobs held."""
        settings = _settings(config_file)
        doc = _read_only(settings, lambda led: workers_document(led, float(settings.lease.ttl)))
        if as_json:
            click.echo(json.dumps(doc, indent=2))
            return
        if not doc:
            click.echo("no workers registered")
        for w in doc:
            click.echo(_worker_line(w))

    @ledger.command(epilog=examples("archiver ledger migrate --dry-run",
                                    "archiver ledger migrate"))
    @config_option
    @json_option
    @click.option("--dry-run", is_flag=True, help="List the pending migrations, apply none.")
    def migrate(config_file: str, as_json: bool, dry_run: bool) -> None:
        """Apply pending schema migrations (SQLite also does on open)."""
        settings = _settings(config_file)
        ro = _open(settings, read_only=True)
        try:
            before = ro.schema_info()
        finally:
            ro.close()
        applied: list[str] = []
        after = before
        if not dry_run and before["pending"]:
            led = _open(settings, migrate=True)
            try:
                after = led.schema_info()
            finally:
                led.close()
            applied = [name for name in before["pending"] if name not in after["pending"]]
        doc = {"dry_run": dry_run, "location": before["location"],
               "from_version": before["version"], "version": after["version"],
               "known_version": after["known_version"], "applied": applied,
               "pending": after["pending"]}
        if as_json:
            click.echo(json.dumps(doc, indent=2))
            return
        if dry_run:
            click.echo(f"{doc['location']}: schema version {before['version']}; would apply: "
                       + (", ".join(before["pending"]) or "nothing (up to date)"))
        elif applied:
            click.echo(f"{doc['location']}: applied {', '.join(applied)}; schema version "
                       f"{after['version']}")
        else:
            click.echo(f"{doc['location']}: schema version {after['version']}, up to date")
