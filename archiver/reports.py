"""What ``status`` and ``ls`` show, as data: the same for ``--json``, the text output and
the Python API (:mod:`archiver.api`). Reads the ledger only; times are ISO 8601 (UTC)
beside the Unix seconds the ledger keeps.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from .humanize import iso, parse_iso

RECENT_EVENTS = 10


def _event(e: dict[str, Any]) -> dict[str, Any]:
    return {**e, "time": iso(e.get("ts"))}


def pending_writers(ledger) -> list[dict[str, Any]]:
    """Writers opened and not yet committed or aborted, with their owner process and
    whether it still runs (``alive``: its pid on this host; None: another host's)."""
    from .ledger.rows import pid_alive
    here = socket.gethostname()
    out = []
    for p in ledger.list_pending():
        alive = None
        if p.host == here and p.pid is not None:
            alive = pid_alive(p.pid)
        elif p.owner is None and p.host is None:
            alive = False
        out.append({"sink": p.sink, "job_id": p.job_id, "path": p.path,
                    "started": p.started, "started_at": iso(p.started), "owner": p.owner,
                    "host": p.host, "pid": p.pid, "owner_heartbeat": p.owner_heartbeat,
                    "owner_heartbeat_at": iso(p.owner_heartbeat), "alive": alive})
    return out


def status_document(ledger, job_id: str | None = None,
                    recent: int = RECENT_EVENTS) -> dict[str, Any]:
    """What ``archiver status --json`` prints: jobs by state, objects and bytes per sink,
    problems, expiry warnings, pending writers, the ``recent`` latest events; with
    ``job_id`` that job's record, stored copies and events (``job`` is None when the
    ledger does not know the job)."""
    data = ledger.summary()
    data["generated_at"] = iso(time.time())
    data["pending"] = pending_writers(ledger)
    data["pending_writers"] = len(data["pending"])
    data["recent_events"] = [_event(e) for e in ledger.events(limit=recent)] if recent else []
    if job_id is not None:
        rows = ledger.job_rows(job_id)
        if not rows:
            data["job"] = None
            data["events"] = []
            return data
        row = rows[0]
        report = ledger.job_report(job_id)
        report.update({"job_id": row.job_id, "project_id": row.project_id,
                       "status": row.status, "state": row.state, "error": row.error,
                       "expires_at": row.expires_at, "first_seen": iso(row.first_seen),
                       "updated": iso(row.updated), "archived_at": iso(row.archived_at)})
        data["job"] = report
        data["events"] = [_event(e) for e in ledger.events(job_id)]
    return data


def job_listing(ledger, *, states: list[str] | None = None,
                projects: list[str] | None = None, sinks: list[str] | None = None,
                expiring_within: float | None = None) -> list[dict[str, Any]]:
    """What ``archiver ls --json`` prints: one entry per job the ledger knows, with its
    state, expiry, objects and bytes stored (in all and per sink). Filters combine:
    ``states``, ``projects``, ``sinks`` (jobs with a copy there), ``expiring_within``
    (seconds: jobs whose ``expiresAt`` is at most that far away, past ones included)."""
    per_job: dict[str, dict[str, Any]] = {}
    for c in ledger.copy_rows():
        agg = per_job.setdefault(c.job_id, {"paths": {}, "sinks": {}})
        agg["paths"][c.path] = max(agg["paths"].get(c.path, 0), c.size or 0)
        s = agg["sinks"].setdefault(c.sink, {"objects": 0, "bytes": 0})
        s["objects"] += 1
        s["bytes"] += c.size or 0
    limit = None if expiring_within is None else time.time() + expiring_within
    out = []
    for row in ledger.job_rows():
        agg = per_job.get(row.job_id, {"paths": {}, "sinks": {}})
        if states and row.state not in states:
            continue
        if projects and row.project_id not in projects:
            continue
        if sinks and not set(sinks) & set(agg["sinks"]):
            continue
        expires = parse_iso(row.expires_at)
        if limit is not None and (expires is None or expires > limit):
            continue
        out.append({"job_id": row.job_id, "project_id": row.project_id, "status": row.status,
                    "state": row.state, "expires_at": row.expires_at,
                    "objects": len(agg["paths"]), "bytes": sum(agg["paths"].values()),
                    "sinks": agg["sinks"], "error": row.error,
                    "first_seen": iso(row.first_seen), "archived_at": iso(row.archived_at)})
    return out


__all__ = ["job_listing", "pending_writers", "status_document"]
