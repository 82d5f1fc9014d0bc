"""Several processes opening one new ledger at the same moment all get it.

SQLite answers ``PRAGMA journal_mode=WAL`` with "database is locked" at once, without its
busy handler, while another connection is inside a transaction on the file: two worker
children started together on a fresh state_dir then lost one of them (exit 2). Forked
processes released by one event open a fresh ledger 40 times over; before the retry,
about one open in twenty failed."""

from __future__ import annotations

import multiprocessing

from archiver.ledger.sqlite import SQLiteLedger

ROUNDS, PROCESSES = 40, 3


def _open(path, go, results) -> None:
    go.wait(10)
    try:
        SQLiteLedger(path).close()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_new_ledger_together_all_get_it(tmp_path):
    ctx = multiprocessing.get_context("fork")
    outcomes = []
    for i in range(ROUNDS):
        path = tmp_path / f"r{i}" / "state" / "ledger.sqlite"
        go, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(path, go, results)) for _ in range(PROCESSES)]
        for p in procs:
            p.start()
        go.set()
        outcomes += [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(10)
    failures = [o for o in outcomes if o != "ok"]
    assert not failures, f"{len(failures)} of {len(outcomes)} opens failed: {failures[0]}"
