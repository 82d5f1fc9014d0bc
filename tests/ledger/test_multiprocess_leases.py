"""Four spawned processes race for the same named leases on one SQLite ledger (the
dispatcher's leader lease): exactly one holder each round, also when the previous
holder's lease had run out."""

from __future__ import annotations

import multiprocessing
import time

from archiver.ledger import open_ledger
from archiver.testing.ledger_contract_fleet import lease_racer

PROCESSES, ROUNDS = 4, 8


def test_four_processes_one_lease_holder_each_round(tmp_path):
    ledger = open_ledger(tmp_path)
    for rnd in range(1, ROUNDS, 2):  # odd rounds: a lapsed holder to take over
        assert ledger.take_lease(f"leader-{rnd}", "old", -1.0)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        start_at = time.time() + 3.0  # time for the interpreters to start and import
        results = pool.starmap(lease_racer, [(str(tmp_path), start_at, ROUNDS)] * PROCESSES)
    for rnd in range(ROUNDS):
        assert sum(r[rnd] for r in results) == 1, (rnd, results)
        assert ledger.lease_holder(f"leader-{rnd}") is not None
    ledger.close()
