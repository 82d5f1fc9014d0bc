"""Pull workers without a broker on a PostgreSQL ledger: standalone ``archiver worker``
processes (as on other hosts: the ledger never judges a PostgreSQL lease by pid) claim
what an ``archiver watch`` queues; a worker killed mid-artifact loses its jobs after
``lease.ttl`` to the others; every job archived once, the audit chain verifies."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "workers"))
from worker_helpers import Proc, artifact_gets, wait_for  # noqa: E402

from archiver.ledger import WorkerId  # noqa: E402
from archiver.testing.configs import basic_config  # noqa: E402
from archiver.testing.emulator import ArtifactSpec  # noqa: E402


def test_standalone_workers_share_a_postgres_queue(plangrep_emulator, tmp_path, ledger_url):
    from archiver_postgres import PostgresReadOnlyLedger

    emu = plangrep_emulator

    emu.add_project(project_id="proj_w", name="W")
    slow = emu.add_job("proj_w", artifacts=[ArtifactSpec("big.bin", 6 << 20)])["id"]
    small = [emu.add_job("proj_w", artifacts=[ArtifactSpec(f"s{i}.json", 300 + i)])["id"]
             for i in range(12)]
    emu.faults.slow_body, emu.faults.fault_paths = 0.03, {"big.bin"}
    cfg = tmp_path / "archiver.yaml"
    # named temporary files: the holder of big.bin is found by its pending row
    cfg.write_text(basic_config(emu, tmp_path, temp_files="named", top=textwrap.dedent("""\
        ledger: {url: "${TEST_LEDGER_URL}"}
        lease: {ttl: 4s, heartbeat: 1s, max_lost: 3}
        """)))
    env = {**os.environ, "PLANGREP_API_KEY": emu.api_key, "TEST_LEDGER_URL": ledger_url,
           "ARCHIVER_PLUGINS": "plangrep,local,checksum,decompress,service,compliance,"
                               "ledger,postgres"}
    # The feeder lists and queues, as `watch --workers N` does on its host.
    os.environ["PLANGREP_API_KEY"], os.environ["TEST_LEDGER_URL"] = emu.api_key, ledger_url
    from archiver.executors import RunReport
    from archiver.runtime import Runtime
    from archiver.workers.fleet import triage_and_enqueue
    with Runtime.open(str(cfg)) as rt:
        assert len(triage_and_enqueue(rt, rt.source.iter_jobs(), RunReport())) == 13
    procs = [Proc(tmp_path, f"worker-{i}", ["worker", "-c", str(cfg)], env) for i in range(3)]
    led = PostgresReadOnlyLedger(ledger_url)
    try:
        def holder() -> int | None:
            for row in led.list_pending():
                if row.path == "big.bin" and row.owner:
                    w = WorkerId.parse(row.owner)
                    return w.pid if w else None
            return None

        victim = wait_for("a standalone worker writing big.bin", holder, timeout=60,
                          procs=tuple(procs))
        os.kill(victim, signal.SIGKILL)
        emu.faults.slow_body = 0.0
        wait_for("every job archived", lambda: all(
            led.job_states().get(j) == "archived" for j in [slow, *small]), timeout=90)
        owners = Counter()
        for row in led.audit_rows():
            rec = json.loads(row.line)
            if rec.get("kind") == "job" and rec.get("message") == "archived":
                owners[rec["job_id"]] += 1
        assert owners == Counter({j: 1 for j in [slow, *small]})
        lost = [e for e in led.event_rows(limit=10_000) if e.kind == "lease_lost"]
        # every job the killed worker held (up to `concurrency`) was taken over
        taken_over = {e.job_id for e in lost}
        assert slow in taken_over
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
        led.close()
    gets = artifact_gets(emu)
    # only the jobs the killed worker held may have been fetched again
    again = {k: n for k, n in gets.items() if n > 1
             and not any(f"/jobs/{j}/" in k[0] for j in taken_over)}
    assert not again, again
