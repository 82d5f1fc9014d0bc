"""The ``archiver worker`` command's body: open the runtime, announce, pull, report.

Standalone (under systemd, or by hand beside other workers on the same ledger) it runs
the sinks' preflight and recovers dead writers first, then claims until stopped; the
first SIGTERM drains (``watch.grace_period``), the second aborts. Started by a supervisor
(``--jsonl``) it prints only JSON events on stdout, and in ``--drain`` mode (a ``run``)
the first signal aborts at once, as ``run`` does.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import click

from ..commands import open_runtime, stop_signals
from ..progress import ENV as PROGRESS_ENV


def main(config_file: str, *, drain: bool, jsonl: bool, since: float | None) -> int:
    from ..errors import ArchiverError
    from ..ledger import new_worker_id
    from ..recovery import recover_dead_writers
    from .pull import PullWorker

    lock = threading.Lock()

    def emit(event: dict[str, Any]) -> None:
        line = json.dumps(event, default=str)
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    rt = open_runtime(config_file)
    rt.worker = new_worker_id()
    if jsonl:
        if os.environ.get(PROGRESS_ENV) != "0":  # "0": the supervisor shows no progress
            rt.on_progress = lambda kind, data: emit({"type": "progress", "kind": kind,
                                                      "data": data})
        emit({"type": "hello", "worker_id": rt.worker.id, "pid": rt.worker.pid})
    try:
        if not drain:  # a supervisor in drain mode did both already
            try:
                rt.preflight()
                recover_dead_writers(rt)
            except (ArchiverError, OSError) as exc:
                click.echo(f"error: preflight failed: {exc}", err=True)
                return 3
        grace = 0.0 if drain else float(rt.settings.watch.grace_period)
        quiet = (lambda text: None) if jsonl else None
        with stop_signals(rt, grace=grace, announce=quiet):
            report = PullWorker(rt, drain=drain, since=since,
                                emit=emit if jsonl else None).run()
    finally:
        rt.close()
    if jsonl:
        return 0  # outcomes (a refused key included) went to the supervisor as events
    click.echo(f"worker {rt.worker.id}: archived {len(report.archived)} job(s), "
               f"{len(report.incomplete)} incomplete, {len(report.lost)} lost", err=True)
    if report.fatal:
        click.echo(f"error: {report.fatal}", err=True)
    if report.interrupted and not report.fatal:
        return 0 if not drain else 130
    return report.exit_code
