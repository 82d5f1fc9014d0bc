"""Typed rows: what the ledger hands back, instead of positional tuples and ad-hoc dicts.

Every row is a frozen dataclass, so callers read fields by name (``row.sink``) and a
backend can add a column without shifting anybody's tuple unpacking. JSON columns arrive
decoded (``received``, ``stored``, ``digests``, ``raw`` are dicts). Report documents
(``summary()``, ``job_report()``, ``events()``) stay JSON-able dicts: they are printed as
they are by ``archiver status --json``.

Also here: :class:`WorkerId` (who holds a lease) and the two outcomes of a claim,
:class:`Claim` and :class:`ClaimRefused`; both have ``ok``, so ``if result.ok:`` reads
well at the call site.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

from ..model import Job


@dataclass(frozen=True, slots=True)
class CopyRow:
    """A stored copy of one object (``path`` of ``job_id``) in one sink.

    The first eight fields are those ``ledger.copies(job_id)`` always had, in the same
    order. ``checked_at`` (last fixity check) and ``project_id`` are filled in by
    ``copy_rows()`` only."""

    job_id: str
    path: str
    sink: str
    key: str
    size: int
    received: dict[str, str]
    stored: dict[str, str]
    verified: bool
    location: str | None = None
    provider_checksum: Any = None
    stored_at: float | None = None
    checked_at: float | None = None
    project_id: str | None = None


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A sink writer that was opened and not yet committed or aborted (its ``token`` is
    what ``Sink.discard`` needs). ``owner`` is the worker that opened it (None for rows
    written by releases without workers); ``host``, ``pid`` and ``owner_heartbeat`` come
    from that worker's row (host and pid parsed from the worker id when the row is gone,
    ``owner_heartbeat`` then None: the worker is dead or was forgotten)."""

    id: int
    sink: str
    token: str
    job_id: str | None
    path: str | None
    started: float
    owner: str | None = None
    host: str | None = None
    pid: int | None = None
    owner_heartbeat: float | None = None


@dataclass(frozen=True, slots=True)
class OpenJobRow:
    """A job that is not settled (watch mode, metrics). ``raw`` is the job object as last
    read from the API (``{}`` when the ledger holds none or it does not parse)."""

    job_id: str
    project_id: str
    status: str
    state: str
    expires_at: str | None
    raw: dict[str, Any]
    first_seen: float


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit record as stored: the canonical line, the hash kept beside it, its seq."""

    line: str
    hash: str
    seq: int


@dataclass(frozen=True, slots=True)
class BagFileRow:
    """A BagIt tag file written for a job in a sink (``digests`` may hold ``last_seq``)."""

    job_id: str
    sink: str
    name: str
    key: str
    size: int
    digests: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JobRow:
    """A job's record, lease columns included."""

    job_id: str
    project_id: str
    status: str
    state: str
    expires_at: str | None = None
    error: str | None = None
    first_seen: float | None = None
    updated: float | None = None
    archived_at: float | None = None
    owner: str | None = None
    lease_until: float | None = None
    attempts: int = 0
    lost_leases: int = 0
    not_before: float | None = None
    parked: bool = False


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """Who holds a job and whether that holder is alive (``lease_rows()``): alive means
    its worker row exists (it registered and was neither unregistered, expired nor
    forgotten) and, when it runs on this host, its pid is running."""

    job_id: str
    state: str
    parked: bool
    error: str | None
    owner: str | None
    lease_until: float | None
    attempts: int
    lost_leases: int
    not_before: float | None
    claimed_at: float | None
    owner_heartbeat: float | None
    owner_alive: bool


@dataclass(frozen=True, slots=True)
class EventRow:
    """An event (also an audit record). ``as_dict()`` is the shape ``events()`` returns."""

    id: int
    ts: float
    kind: str
    job_id: str | None
    path: str | None
    sink: str | None
    message: str | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["id"]
        return out


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """A registered worker, its last heartbeat and the jobs it holds leases on (``jobs``:
    their ids; ``leases``: ``(job id, lease_until)`` of each, in the same order)."""

    worker_id: str
    host: str | None
    pid: int | None
    started: float | None
    heartbeat_at: float | None
    jobs: tuple[str, ...] = ()
    leases: tuple[tuple[str, float | None], ...] = ()


@dataclass(frozen=True, slots=True)
class WorkerId:
    """Who holds a lease: ``host:pid:hex``, unique per process start (see new_worker_id)."""

    id: str
    host: str
    pid: int

    def __str__(self) -> str:
        return self.id

    @property
    def local(self) -> bool:
        """Does this worker run on this host?"""
        return self.host == socket.gethostname()

    @classmethod
    def parse(cls, worker_id: str) -> WorkerId | None:
        """The parts of a ``host:pid:hex`` id; None when it is not one."""
        host, sep, _rest = worker_id.rpartition(":")
        host, sep2, pid = host.rpartition(":")
        if not (sep and sep2 and host and pid.isdigit()):
            return None
        return cls(worker_id, host, int(pid))


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` running on this host? (A zombie counts as running.)"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def new_worker_id(host: str | None = None, pid: int | None = None) -> WorkerId:
    """A fresh id for this process: the host name, the pid and 48 random bits (so a pid
    reused after a restart is a different worker)."""
    host = host or socket.gethostname()
    pid = os.getpid() if pid is None else pid
    return WorkerId(f"{host}:{pid}:{secrets.token_hex(6)}", host, pid)


@dataclass(frozen=True, slots=True)
class Claim:
    """A lease taken: the job as the ledger knows it, how many times it was claimed (this
    claim included) and how many leases on it were lost so far."""

    job_id: str
    project_id: str
    status: str
    raw: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1
    lost_leases: int = 0
    ok: bool = field(default=True, init=False)

    def job(self) -> Job:
        """The :class:`~archiver.model.Job` to archive (``raw`` as last read from the API)."""
        return Job(self.job_id, self.project_id, self.status, dict(self.raw))


@dataclass(frozen=True, slots=True)
class ClaimRefused:
    """No lease taken, and why: ``"settled"`` (nothing to do), ``"held"`` (``holder``
    has a live lease), ``"parked"`` (too many lost leases; ``force`` retries it) or
    ``"backoff"`` (``not_before`` has not passed)."""

    reason: str
    holder: str | None = None
    ok: bool = field(default=False, init=False)


__all__ = ["AuditRow", "BagFileRow", "Claim", "ClaimRefused", "CopyRow", "EventRow", "JobRow",
           "LeaseRow", "OpenJobRow", "PendingRow", "WorkerId", "WorkerRow", "new_worker_id",
           "pid_alive"]
