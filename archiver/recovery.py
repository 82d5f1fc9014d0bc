"""Recovery of the dead only: discard what writers of dead processes left behind.

Every writer's pending token (temporary file, multipart upload id, resumable session) is
recorded with its owner, the worker id of the process writing it. A token is discarded
only when that owner is dead:

* it ran on this host and its pid no longer exists: the pid is authoritative on the same
  host (found at once, without waiting for a heartbeat to go stale: restic's same-host
  check), so a live process keeps its writers even when it has no heartbeat (``replicate``,
  bag tag files) or is stopped (SIGSTOP: its leases go, its files stay until it resumes
  or dies);
* on another host: its heartbeat is older than ``lease.ttl``, or it has no worker row at
  all (it unregistered, or was forgotten after going stale);
* a token written by a release before owners were recorded (no owner) counts as dead
  once it is older than ``lease.ttl``.

Local temporary files are discarded only on the host that wrote them (another host's
path means nothing here); tokens of other sinks (S3 upload ids, GCS session URLs) can be
discarded from any host. ``force=True`` discards everything: for ``cleanup --force``,
when nothing else runs on this ledger.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import ArchiverError
from .ledger import pid_alive

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("archiver.recovery")

HOST = socket.gethostname()


@dataclass
class Recovery:
    discarded: list[str] = field(default_factory=list)   # "sink: token owner"
    live: int = 0            # tokens of live writers, left alone
    elsewhere: int = 0       # local tokens of another host, left to that host
    failed: list[str] = field(default_factory=list)
    unconfigured: int = 0    # the token's sink is no longer configured


def owner_dead(row, ttl: float, now: float, me: str | None = None) -> bool:
    """Whether the writer that recorded pending ``row`` is dead (see module doc)."""
    if row.owner is None:
        return now - row.started > ttl
    if row.owner == me:
        return False
    if row.host == HOST and row.pid is not None:
        return not pid_alive(row.pid)
    return row.owner_heartbeat is None or now - row.owner_heartbeat > ttl


def recover_dead_writers(rt: Runtime, *, force: bool = False,
                         dry_run: bool = False) -> Recovery:
    out = Recovery()
    ttl, now = float(rt.settings.lease.ttl), time.time()
    for row in rt.ledger.list_pending():
        sink = rt.sinks.get(row.sink)
        if sink is None:
            out.unconfigured += 1  # keep the record: that sink may come back
            continue
        if not force and not owner_dead(row, ttl, now, rt.worker_id):
            out.live += 1
            continue
        if not force and row.owner is not None and row.host != HOST and \
                getattr(sink, "host_local", False):
            out.elsewhere += 1
            continue
        what = f"{row.sink}: writer of {row.job_id or '-'} {row.path or ''}".rstrip()
        if dry_run:
            out.discarded.append(what)
            continue
        try:
            sink.discard(row.token)
        except ArchiverError as exc:
            log.warning("sink %s: could not discard a crashed writer: %s", row.sink, exc)
            out.failed.append(f"{what}: {exc}")
            continue
        with rt.ledger.batch():
            rt.ledger.remove_pending(row.id)
            rt.ledger.event("discarded", "crashed writer cleaned up", sink=row.sink,
                            job_id=row.job_id, path=row.path)
        out.discarded.append(what)
    return out
