-- 0003: fleet coordination. Named leases (the dispatcher's leader lease) use the `leases`
-- table of 0002; this adds the shared token buckets of the fleet API budget.
--
-- budgets: one token bucket per name, shared by every process on the ledger. tokens left
-- at `updated` (Unix seconds, host clock), refilled at the caller's rate up to its burst;
-- paused_until: a 429 Retry-After seen by any worker, nobody gets tokens before then.
CREATE TABLE IF NOT EXISTS budgets (
    name TEXT PRIMARY KEY, tokens REAL NOT NULL, updated REAL NOT NULL, paused_until REAL
);
