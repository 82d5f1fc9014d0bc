"""Four spawned processes claim and finish a few hundred jobs on one SQLite ledger: every
job is finished exactly once, nobody ever holds a job another holds, and every process
gets work.

Per-process progress: SQLite's busy handler is not fair (a waiting process sleeps and
retries while the holder may take the lock again at once), so a process that does
nothing between two transactions can starve the others. A worker, though, archives
between its claim and its finish, outside any transaction; with 1 ms of such work per job
every process gets jobs (the notes measured a starved process with no work at all).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter

from archiver.ledger import ARCHIVED, open_ledger
from archiver.ledger.chainrules import verify_chain
from archiver.testing.ledger_contract import claim_worker, job

PROCESSES, JOBS = 4, 400


def test_four_processes_claim_every_job_once(tmp_path):
    ledger = open_ledger(tmp_path)
    assert ledger.enqueue([job(f"{i:04d}") for i in range(JOBS)]) == JOBS
    ctx = multiprocessing.get_context("spawn")
    started = time.monotonic()
    with ctx.Pool(PROCESSES) as pool:
        start_at = time.time() + 3.0  # time for the interpreters to start and import
        deadline = start_at + 15.0
        results = pool.starmap(claim_worker, [(str(tmp_path), start_at, deadline)] * PROCESSES)
    assert time.monotonic() - started < 20
    finished = Counter(j for r in results for j in r["done"])
    assert len(finished) == JOBS and set(finished.values()) == {1}, "a job finished twice"
    assert sum(r["lost"] for r in results) == 0, "a lease was lost: a double claim"
    per_process = {r["worker"]: len(r["done"]) for r in results}
    assert all(n > 0 for n in per_process.values()), per_process
    assert set(ledger.job_states().values()) == {ARCHIVED}
    # each job: queued, then archived, and nothing else (no second claim that finished)
    records = [json.loads(r.line) for r in ledger.audit_rows()]
    assert Counter(r["message"] for r in records if r["kind"] == "job") == \
        {"queued": JOBS, ARCHIVED: JOBS}
    assert all(r.attempts == 1 and r.owner is None for r in ledger.job_rows())
    brk, n = verify_chain(ledger.audit_rows())
    assert brk is None and n == 2 * JOBS
    assert ledger.workers() == []
    ledger.close()
