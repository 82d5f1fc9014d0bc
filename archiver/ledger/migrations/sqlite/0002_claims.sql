-- 0002: claims and leases (many workers, one ledger), worker registry, named leases.
--
-- jobs: who holds the job (owner = a worker id "host:pid:hex") until when, how often it
-- was claimed and how many leases on it were lost (the worker died or stalled), when it
-- was last claimed, the backoff (not_before), the parsed expiresAt for ordering, and
-- parked (too many lost leases: claim_next skips it until it is claimed with force).
ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until REAL;
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN lost_leases INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN claimed_at REAL;
ALTER TABLE jobs ADD COLUMN not_before REAL;
ALTER TABLE jobs ADD COLUMN expires_ts REAL;
ALTER TABLE jobs ADD COLUMN parked INTEGER NOT NULL DEFAULT 0;
-- Unix seconds of expiresAt (ISO 8601): julianday() reads the same forms the API writes.
UPDATE jobs SET expires_ts = (julianday(expires_at) - 2440587.5) * 86400.0
 WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_claimable ON jobs(state, parked, expires_ts);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner);

CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY, host TEXT, pid INTEGER, started REAL, heartbeat_at REAL
);

-- The worker that opened a pending writer (NULL: written before workers existed).
ALTER TABLE pending ADD COLUMN owner TEXT;
CREATE INDEX IF NOT EXISTS pending_owner ON pending(owner);

-- Named leases for later use (dispatcher leadership, shared throttles).
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, owner TEXT, lease_until REAL
);

-- count_events / jobs_with_event run on every poll and every scrape.
CREATE INDEX IF NOT EXISTS events_kind ON events(kind, job_id);
