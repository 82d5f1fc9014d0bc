"""The SQL of the PostgreSQL ledger's writes, in one place (the same statements as
:mod:`archiver.ledger.sqlite_sql`, in PostgreSQL's dialect)."""

from __future__ import annotations

from archiver.ledger.states import QUEUED, WAITING

#: The database's clock, Unix seconds (claims, leases and heartbeats use it, never a host's).
NOW = "extract(epoch from clock_timestamp())::double precision"

UPSERT_JOB = (
    "INSERT INTO jobs (job_id, project_id, status, state, expires_at, error, raw,"
    " first_seen, updated, archived_at, expires_ts) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (job_id) DO UPDATE SET project_id=EXCLUDED.project_id,"
    " status=EXCLUDED.status, state=EXCLUDED.state, expires_at=EXCLUDED.expires_at,"
    " error=EXCLUDED.error, raw=EXCLUDED.raw, updated=EXCLUDED.updated,"
    " archived_at=COALESCE(jobs.archived_at, EXCLUDED.archived_at),"
    " expires_ts=EXCLUDED.expires_ts")
# claim() / enqueue(): a new row is queued (RETURNING tells it was inserted) ...
INSERT_QUEUED = (
    "INSERT INTO jobs (job_id, project_id, status, state, expires_at, raw, first_seen,"
    " updated, expires_ts) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (job_id) DO NOTHING RETURNING 1")
# ... an existing one (locked first) is refreshed: waiting becomes queued, others keep theirs.
REFRESH_QUEUED = (
    "UPDATE jobs SET project_id=%s, status=%s, expires_at=%s, raw=%s, updated=%s,"
    f" expires_ts=%s, state=CASE WHEN state='{WAITING}' THEN '{QUEUED}' ELSE state END"
    " WHERE job_id=%s")
PUT_ARTIFACT = (
    "INSERT INTO artifacts (job_id, path, kind, key, filename, size, received, state, error,"
    " updated) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (job_id, path) DO UPDATE"
    " SET kind=EXCLUDED.kind, key=EXCLUDED.key, filename=EXCLUDED.filename,"
    " size=EXCLUDED.size, received=EXCLUDED.received, state=EXCLUDED.state,"
    " error=EXCLUDED.error, updated=EXCLUDED.updated")
PUT_COPY = (
    "INSERT INTO copies (job_id, path, sink, key, location, size, received, stored,"
    " provider_checksum, chain, extra, existed, verified, stored_at)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (job_id, path, sink) DO UPDATE SET key=EXCLUDED.key,"
    " location=EXCLUDED.location, size=EXCLUDED.size, received=EXCLUDED.received,"
    " stored=EXCLUDED.stored, provider_checksum=EXCLUDED.provider_checksum,"
    " chain=EXCLUDED.chain, extra=EXCLUDED.extra, existed=EXCLUDED.existed,"
    " verified=EXCLUDED.verified, stored_at=EXCLUDED.stored_at")
ADD_EVENT = ("INSERT INTO events (ts, kind, job_id, path, sink, message)"
             " VALUES (%s,%s,%s,%s,%s,%s)")
PUT_FIXITY = (
    "INSERT INTO fixity (job_id, path, sink, checked_at, ok, detail)"
    " VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (job_id, path, sink) DO UPDATE SET"
    " checked_at=EXCLUDED.checked_at, ok=EXCLUDED.ok, detail=EXCLUDED.detail")
PUT_BAG = (
    "INSERT INTO bags (job_id, sink, name, key, size, digests, stored_at)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (job_id, sink, name) DO UPDATE SET"
    " key=EXCLUDED.key, size=EXCLUDED.size, digests=EXCLUDED.digests,"
    " stored_at=EXCLUDED.stored_at")
#: A job's lease columns, locked for this transaction, and the database's "now".
LEASE_STATE = ("SELECT state, owner, lease_until, parked, lost_leases, not_before,"
               f" {NOW} FROM jobs WHERE job_id=%s FOR UPDATE")

# -- the audit chain (appended under pg_advisory_xact_lock; see ledger.py)
# The chain's head (job NULL) and each named job's last record, in one statement.
AUDIT_HEADS = (
    "SELECT NULL::text, seq, hash FROM"
    " (SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1) AS head"
    " UNION ALL SELECT j, NULL::bigint,"
    " (SELECT hash FROM audit WHERE job_id = j ORDER BY seq DESC LIMIT 1)"
    " FROM unnest(%s::text[]) AS j")
AUDIT_INSERT = ("INSERT INTO audit (seq, job_id, prev, job_prev, line, hash)"
                " VALUES (%s,%s,%s,%s,%s,%s)")
