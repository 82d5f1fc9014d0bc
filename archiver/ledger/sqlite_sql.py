"""The SQL of the SQLite ledger's writes, in one place (shared by its mixins)."""

from __future__ import annotations

from .states import QUEUED, WAITING

UPSERT_JOB = (
    "INSERT INTO jobs (job_id, project_id, status, state, expires_at, error, raw,"
    " first_seen, updated, archived_at, expires_ts) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT(job_id) DO UPDATE SET project_id=excluded.project_id,"
    " status=excluded.status, state=excluded.state, expires_at=excluded.expires_at,"
    " error=excluded.error, raw=excluded.raw, updated=excluded.updated,"
    " archived_at=COALESCE(jobs.archived_at, excluded.archived_at),"
    " expires_ts=excluded.expires_ts")
# claim() / enqueue(): new rows are queued, waiting ones become queued, others keep theirs.
UPSERT_QUEUED = (
    "INSERT INTO jobs (job_id, project_id, status, state, expires_at, raw, first_seen,"
    " updated, expires_ts) VALUES (?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT(job_id) DO UPDATE SET project_id=excluded.project_id,"
    " status=excluded.status, expires_at=excluded.expires_at, raw=excluded.raw,"
    " updated=excluded.updated, expires_ts=excluded.expires_ts,"
    f" state=CASE WHEN jobs.state='{WAITING}' THEN '{QUEUED}' ELSE jobs.state END")
PUT_ARTIFACT = (
    "INSERT OR REPLACE INTO artifacts (job_id, path, kind, key, filename, size, received,"
    " state, error, updated) VALUES (?,?,?,?,?,?,?,?,?,?)")
PUT_COPY = (
    "INSERT OR REPLACE INTO copies (job_id, path, sink, key, location, size, received,"
    " stored, provider_checksum, chain, extra, existed, verified, stored_at)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
ADD_EVENT = ("INSERT INTO events (ts, kind, job_id, path, sink, message)"
             " VALUES (?,?,?,?,?,?)")
PUT_FIXITY = ("INSERT OR REPLACE INTO fixity (job_id, path, sink, checked_at, ok, detail)"
              " VALUES (?,?,?,?,?,?)")
LEASE_STATE = "SELECT state, owner, lease_until, parked, lost_leases, not_before FROM jobs"
