"""``archiver status`` and ``archiver ls``: what the ledger says (no API, no secret; a
missing ledger is an error, never a new one)."""

from __future__ import annotations

import json

import click

from .commands import (
    EXIT_UNKNOWN_JOB,
    config_option,
    examples,
    fail,
    json_option,
    open_runtime,
    parse_duration,
)

STATES = ("archived", "incomplete", "nothing_to_store", "lost", "waiting", "queued")


def _copy_line(c: dict) -> str:
    from .humanize import size
    return (f"  {c['sink']}: {c['location'] or c['key']} {size(c['size'])} sha256 received "
            f"{(c['received'] or {}).get('sha256')} stored {(c['stored'] or {}).get('sha256')}")


def _event_line(e: dict) -> str:
    where = " ".join(x for x in (e.get("job_id"), e.get("sink"), e.get("path")) if x)
    return f"  {e['time']} {e['kind']}{' ' + where if where else ''}: {e.get('message') or ''}"


def _writer_line(w: dict) -> str:
    owner = w["owner"] or "no recorded owner"
    alive = {True: "running", False: "dead", None: "on another host"}[w["alive"]]
    what = " ".join(x for x in (w["job_id"], w["path"]) if x) or "-"
    return f"  sink {w['sink']}: {what} since {w['started_at']}, {owner} ({alive})"


@click.command(epilog=examples(
    "archiver status",
    "archiver status --job job_123        # its copies, digests and events",
    "archiver status --json | jq .jobs"))
@config_option
@json_option
@click.option("--job", "job_id", help="Show every stored copy of one job, and its events.")
@click.option("--events", "recent", type=click.IntRange(min=0), default=10,
              show_default=True, help="How many recent events to show.")
def status(config_file: str, as_json: bool, job_id: str | None, recent: int) -> None:
    """Jobs by state, bytes per sink, problems, pending writers and recent events, from
    the ledger."""
    from .humanize import size
    from .reports import status_document
    rt = open_runtime(config_file, require_env=False, create=False)
    try:
        data = status_document(rt.ledger, job_id, recent)
        location = rt.ledger.location
    finally:
        rt.close()
    if job_id is not None and data["job"] is None:
        fail(f"job {job_id}: not in the ledger at {location} (never seen by this archiver, "
             "or another state_dir?)", EXIT_UNKNOWN_JOB)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    jobs = data["jobs"]
    click.echo(f"ledger: {location} (at {data['generated_at']})")
    click.echo("jobs: " + (", ".join(f"{k} {v}" for k, v in sorted(jobs.items())) or "none"))
    for sink, s in sorted(data["sinks"].items()):
        click.echo(f"sink {sink}: {s['objects']} objects, {size(s['bytes'])}")
    for p in data["problems"]:
        click.echo(f"{p['state'].upper()} {p['job_id']}: {p['error']}")
    for w in data["expiry_warnings"]:
        click.echo(f"EXPIRES SOON {w['job_id']} (at {w['expires_at']}), not archived yet")
    click.echo(f"pending writers: {len(data['pending']) or 'none'}"
               + (" (`archiver cleanup` discards the dead ones)"
                  if any(w["alive"] is False for w in data["pending"]) else ""))
    for w in data["pending"]:
        click.echo(_writer_line(w))
    if job_id is None and data["recent_events"]:
        click.echo("recent events:")
        for e in data["recent_events"]:
            click.echo(_event_line(e))
    if job_id is not None:
        j = data["job"]
        click.echo(f"job {job_id} (project {j['project_id']}): {j['state']}, status "
                   f"{j['status']}, expires {j['expires_at'] or '-'}, first seen "
                   f"{j['first_seen']}" + (f", archived {j['archived_at']}"
                                           if j["archived_at"] else ""))
        if j["error"]:
            click.echo(f"  error: {j['error']}")
        for c in j["copies"]:
            click.echo(_copy_line(c))
        click.echo("events:")
        for e in data["events"]:
            click.echo(_event_line(e))


@click.command("ls", epilog=examples(
    "archiver ls",
    "archiver ls --state incomplete --state lost",
    "archiver ls --expiring 2d --json        # open jobs that expire within two days",
    "archiver ls --project proj_a --sink offsite"))
@config_option
@json_option
@click.option("--state", "states", multiple=True, type=click.Choice(STATES),
              help="Only jobs in this state (repeatable).")
@click.option("--project", "projects", multiple=True, help="Only this project (repeatable).")
@click.option("--sink", "sinks", multiple=True,
              help="Only jobs with a copy in this sink (repeatable).")
@click.option("--expiring", metavar="DURATION",
              help="Only jobs that expire within DURATION (e.g. 12h, 2d), past ones too.")
def ls(config_file: str, as_json: bool, states, projects, sinks, expiring) -> None:
    """List the jobs of the ledger: state, expiry, objects, size and sinks."""
    from .humanize import size
    from .reports import job_listing
    within = parse_duration(expiring) if expiring is not None else None
    rt = open_runtime(config_file, require_env=False, create=False)
    try:
        unknown = [s for s in sinks if s not in {b.label for b in rt.loaded.sinks}]
        if unknown:
            fail(f"--sink {unknown[0]}: no sink of that name in the configuration "
                 f"(configured: {', '.join(b.label for b in rt.loaded.sinks)})")
        rows = job_listing(rt.ledger, states=list(states) or None,
                           projects=list(projects) or None, sinks=list(sinks) or None,
                           expiring_within=within)
    finally:
        rt.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no jobs" + (" match" if states or projects or sinks or expiring else
                                " in the ledger yet"))
        return
    table = [("JOB", "PROJECT", "STATE", "EXPIRES", "OBJECTS", "SIZE", "SINKS")]
    table += [(r["job_id"], r["project_id"], r["state"], r["expires_at"] or "-",
               str(r["objects"]), size(r["bytes"]), ",".join(sorted(r["sinks"])) or "-")
              for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


__all__ = ["ls", "status"]
