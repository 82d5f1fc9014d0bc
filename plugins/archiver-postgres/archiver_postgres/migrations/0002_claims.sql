-- 0002: claims and leases (many workers on many hosts, one ledger), worker registry,
-- named leases; as SQLite's 0002_claims.sql. Lease times are the database's clock.
--
-- jobs: who holds the job (owner = a worker id "host:pid:hex") until when, how often it
-- was claimed and how many leases on it were lost (the worker died or stalled), when it
-- was last claimed, the backoff (not_before), the parsed expiresAt for ordering, and
-- parked (too many lost leases: claim_next skips it until it is claimed with force).
ALTER TABLE jobs
    ADD COLUMN owner text COLLATE "C",
    ADD COLUMN lease_until double precision,
    ADD COLUMN attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN lost_leases integer NOT NULL DEFAULT 0,
    ADD COLUMN claimed_at double precision,
    ADD COLUMN not_before double precision,
    ADD COLUMN expires_ts double precision,
    ADD COLUMN parked boolean NOT NULL DEFAULT false;
-- Unix seconds of expiresAt (ISO 8601; naive times read as UTC, as archiver.ledger.facts
-- does); a value PostgreSQL cannot read stays NULL (the job is then claimed last).
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT job_id, expires_at FROM jobs WHERE expires_at IS NOT NULL LOOP
        BEGIN
            UPDATE jobs SET expires_ts = extract(epoch FROM CASE
                WHEN r.expires_at ~ '(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)$'
                THEN r.expires_at::timestamptz
                ELSE r.expires_at::timestamp AT TIME ZONE 'UTC' END)
             WHERE job_id = r.job_id;
        EXCEPTION WHEN others THEN
            NULL;
        END;
    END LOOP;
END;
$$;
CREATE INDEX jobs_claimable ON jobs (state, parked, expires_ts);
CREATE INDEX jobs_owner ON jobs (owner);

CREATE TABLE workers (
    worker_id text COLLATE "C" PRIMARY KEY, host text, pid integer,
    started double precision, heartbeat_at double precision
);

-- The worker that opened a pending writer.
ALTER TABLE pending ADD COLUMN owner text;
CREATE INDEX pending_owner ON pending (owner);

-- Named leases for later use (dispatcher leadership, shared throttles).
CREATE TABLE leases (
    name text PRIMARY KEY, owner text, lease_until double precision
);

-- count_events / jobs_with_event run on every poll and every scrape.
CREATE INDEX events_kind ON events (kind, job_id);
