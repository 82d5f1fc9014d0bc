-- 0001: the ledger's tables, as SQLite's 0001_initial.sql has them (PostgreSQL types).
-- Epochs are Unix seconds in double precision; JSON columns hold JSON text (as SQLite);
-- ids, paths and sink names sort bytewise (COLLATE "C"), as SQLite sorts them.
CREATE TABLE jobs (
    job_id text COLLATE "C" PRIMARY KEY, project_id text NOT NULL,
    status text NOT NULL, state text NOT NULL, expires_at text, error text, raw text,
    first_seen double precision NOT NULL, updated double precision NOT NULL,
    archived_at double precision
);
CREATE TABLE artifacts (
    job_id text COLLATE "C" NOT NULL, path text COLLATE "C" NOT NULL,
    kind text NOT NULL, key text, filename text, size bigint, received text,
    state text NOT NULL, error text, updated double precision NOT NULL,
    PRIMARY KEY (job_id, path)
);
CREATE TABLE copies (
    job_id text COLLATE "C" NOT NULL, path text COLLATE "C" NOT NULL,
    sink text COLLATE "C" NOT NULL, key text NOT NULL, location text,
    size bigint NOT NULL, received text NOT NULL, stored text NOT NULL,
    provider_checksum text, chain text, extra text, existed boolean NOT NULL,
    verified boolean NOT NULL, stored_at double precision NOT NULL,
    PRIMARY KEY (job_id, path, sink)
);
CREATE TABLE pending (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, sink text COLLATE "C" NOT NULL,
    token text NOT NULL, job_id text COLLATE "C", path text COLLATE "C",
    started double precision NOT NULL
);
CREATE TABLE events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, ts double precision NOT NULL,
    kind text NOT NULL, job_id text COLLATE "C", path text COLLATE "C",
    sink text COLLATE "C", message text
);
CREATE INDEX events_job ON events (job_id);
CREATE TABLE bags (
    job_id text COLLATE "C" NOT NULL, sink text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL, key text NOT NULL, size bigint NOT NULL,
    digests text NOT NULL, stored_at double precision NOT NULL,
    PRIMARY KEY (job_id, sink, name)
);
CREATE TABLE fixity (
    job_id text COLLATE "C" NOT NULL, path text COLLATE "C" NOT NULL,
    sink text COLLATE "C" NOT NULL, checked_at double precision NOT NULL,
    ok boolean NOT NULL, detail text, PRIMARY KEY (job_id, path, sink)
);

-- The audit chain (archiver/ledger/chainrules.py). seq is assigned by the appending
-- transaction under pg_advisory_xact_lock, so it has no gaps; prev and job_prev are the
-- record's links, copied out of its line: two records linking to the same predecessor
-- (a fork) violate a unique constraint instead of branching the chain silently.
CREATE TABLE audit (
    seq bigint PRIMARY KEY CHECK (seq > 0), job_id text COLLATE "C",
    prev text NOT NULL, job_prev text, line text NOT NULL, hash text NOT NULL,
    CONSTRAINT audit_prev_unique UNIQUE (prev),
    CONSTRAINT audit_job_prev_unique UNIQUE (job_id, job_prev),
    CONSTRAINT audit_job_link CHECK ((job_id IS NULL) = (job_prev IS NULL))
);
CREATE INDEX audit_job ON audit (job_id, seq);

-- Append-only: no UPDATE, DELETE or TRUNCATE of audit records, whoever asks.
CREATE FUNCTION archiver_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % of audit records refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION archiver_audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION archiver_audit_append_only();
