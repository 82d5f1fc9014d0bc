-- 0001: the schema of the ledger before schema versions existed (archiver 0.1.0).
-- A ledger with these tables and no schema_migrations table is at version 1.
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, status TEXT NOT NULL,
    state TEXT NOT NULL, expires_at TEXT, error TEXT, raw TEXT,
    first_seen REAL NOT NULL, updated REAL NOT NULL, archived_at REAL
);
CREATE TABLE IF NOT EXISTS artifacts (
    job_id TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, key TEXT,
    filename TEXT, size INTEGER, received TEXT, state TEXT NOT NULL, error TEXT,
    updated REAL NOT NULL, PRIMARY KEY (job_id, path)
);
CREATE TABLE IF NOT EXISTS copies (
    job_id TEXT NOT NULL, path TEXT NOT NULL, sink TEXT NOT NULL, key TEXT NOT NULL,
    location TEXT, size INTEGER NOT NULL, received TEXT NOT NULL, stored TEXT NOT NULL,
    provider_checksum TEXT, chain TEXT, extra TEXT, existed INTEGER NOT NULL,
    verified INTEGER NOT NULL, stored_at REAL NOT NULL, PRIMARY KEY (job_id, path, sink)
);
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, token TEXT NOT NULL,
    job_id TEXT, path TEXT, started REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
    job_id TEXT, path TEXT, sink TEXT, message TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, job_id TEXT, line TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_job ON audit(job_id, seq);
CREATE TABLE IF NOT EXISTS bags (
    job_id TEXT NOT NULL, sink TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL,
    size INTEGER NOT NULL, digests TEXT NOT NULL, stored_at REAL NOT NULL,
    PRIMARY KEY (job_id, sink, name)
);
CREATE TABLE IF NOT EXISTS fixity (
    job_id TEXT NOT NULL, path TEXT NOT NULL, sink TEXT NOT NULL, checked_at REAL NOT NULL,
    ok INTEGER NOT NULL, detail TEXT, PRIMARY KEY (job_id, path, sink)
);
