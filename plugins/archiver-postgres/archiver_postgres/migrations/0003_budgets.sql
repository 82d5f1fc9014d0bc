-- 0003: fleet coordination, as SQLite's 0003_budgets.sql. Named leases (the dispatcher's
-- leader lease) use the `leases` table of 0002; this adds the shared token buckets of the
-- fleet API budget. Times are the database's clock (Unix seconds).
--
-- budgets: one token bucket per name, shared by every process on every host: tokens left
-- at `updated`, refilled at the caller's rate up to its burst; paused_until: a 429
-- Retry-After seen by any worker, nobody gets tokens before then.
CREATE TABLE budgets (
    name text COLLATE "C" PRIMARY KEY, tokens double precision NOT NULL,
    updated double precision NOT NULL, paused_until double precision
);
