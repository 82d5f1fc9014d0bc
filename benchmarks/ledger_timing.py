"""Ledger timings of the distributed path, on a real PostgreSQL (scenario 8).

* claim latency: 8 threads, each with its own ledger handle (a worker process each in a
  fleet), claim queued jobs with ``claim_next`` until none is left; each call is timed;
* audit-lock wait: one audit append (``event``) timed alone, then while 8 processes
  append at once; every append takes the chain's transaction-scoped lock, so the
  difference is the time spent waiting for it.
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
import uuid
from urllib.parse import quote

CLAIMERS = 8
JOBS = 800
APPENDS = 100


def _url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


def _open(url: str, migrate: bool = False):
    from archiver_postgres import open_postgres
    return open_postgres(url, migrate=migrate)


def _appender(url: str, n: int, out) -> None:
    led = _open(url)
    times = []
    try:
        for i in range(n):
            t = time.perf_counter()
            led.event("bench", f"append {i}")
            times.append((time.perf_counter() - t) * 1000)
    finally:
        led.close()
    out.put(times)


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 20 else max(values)


def measure(base: str) -> tuple[dict[str, float], dict[str, float]]:
    import psycopg

    from archiver.ledger import new_worker_id
    from archiver.model import Job

    schema = f"bench_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = _url(base, schema)
    try:
        led = _open(url, migrate=True)
        led.enqueue([Job(f"job_{i}", "proj", "completed", {"id": f"job_{i}"})
                     for i in range(JOBS)])
        led.close()
        claims: list[float] = []
        lock = threading.Lock()

        def claimer() -> None:
            mine = _open(url)
            worker = new_worker_id()
            mine.register_worker(worker)
            try:
                while True:
                    t = time.perf_counter()
                    got = mine.claim_next(worker.id, 60, max_lost=3)
                    took = (time.perf_counter() - t) * 1000
                    if got is None:
                        return
                    with lock:
                        claims.append(took)
            finally:
                mine.close()

        threads = [threading.Thread(target=claimer) for _ in range(CLAIMERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        _appender(url, APPENDS, q)
        alone = q.get(timeout=60)
        procs = [ctx.Process(target=_appender, args=(url, APPENDS, q)) for _ in range(8)]
        for p in procs:
            p.start()
        contended = [x for _ in procs for x in q.get(timeout=300)]
        for p in procs:
            p.join(60)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return ({"median": statistics.median(claims), "p95": _p95(claims)},
            {"alone": statistics.median(alone), "contended": statistics.median(contended)})
