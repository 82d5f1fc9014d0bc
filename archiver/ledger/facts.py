"""What a job record holds beyond the API's job object, the same for every backend: the
parsed expiry (for ordering claims) and the data of a job's ``job`` audit record (the
audit line format depends on it, so it must not differ between backends)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..model import Job


def expires_ts(expires_at: str | None) -> float | None:
    """Unix seconds of ``expiresAt`` (naive times read as UTC, as SQLite's ``julianday``
    does when migration 0002 fills the column in); None when absent or unreadable."""
    if not isinstance(expires_at, str) or not expires_at:
        return None
    try:
        dt = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def job_facts(job: Job, state: str, error: str | None) -> dict[str, Any]:
    """The data of a job's ``job`` audit record."""
    return {"project_id": job.project_id, "status": job.status, "state": state,
            "expires_at": job.expires_at, "error": error}
