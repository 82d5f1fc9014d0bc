"""The PostgreSQL ledger handles: :class:`PostgresLedger` (with its writes: jobs,
artifacts, copies, pending writers, events, bag files, fixity), the dry-run
:class:`PostgresReadOnlyLedger`, and :func:`open_postgres`, the opener registered for
``postgresql://`` URLs. One database (or schema) is shared by workers on many hosts.

**Writes** run in the handle's write transactions (:mod:`.transactions`: group commit,
pipeline mode, the audit chain, outages); claims and leases are :mod:`.claims`.

**Reads** go through a small pool (:mod:`.connections`) and see committed data only;
reads inside ``batch()`` see the ledger as it was before the block, as the protocol says
(the queries: :mod:`.reads`).

**Schema.** Opening never migrates: a ledger of an older schema, or none, is refused
with a :class:`~archiver.errors.LedgerSchemaError` saying to run ``archiver ledger
migrate``, which opens it with ``migrate=True`` (:mod:`.schema`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import psycopg

from archiver.errors import LedgerError, LedgerMissing
from archiver.ledger.auditchain import AuditChain
from archiver.ledger.chainrules import retention_facts
from archiver.ledger.coordination import Coordination
from archiver.ledger.facts import expires_ts, job_facts
from archiver.ledger.readonly import WRITE_METHODS
from archiver.ledger.states import ARCHIVED
from archiver.model import Job, StoredObject

from . import schema
from .claims import PostgresClaims
from .connections import Connections
from .reads import PostgresReads
from .sql import ADD_EVENT, PUT_ARTIFACT, PUT_BAG, PUT_COPY, PUT_FIXITY, UPSERT_JOB
from .transactions import PostgresTransactions, _Committer
from .urls import PgUrl, parse

BACKEND = "postgresql"


def _settings_values(settings: Any) -> tuple[float, float]:
    """``ledger.outage_tolerance`` and ``lease.ttl`` (defaults when absent)."""
    tolerance = getattr(getattr(settings, "ledger", None), "outage_tolerance", None)
    ttl = getattr(getattr(settings, "lease", None), "ttl", None)
    return (60.0 if tolerance is None else float(tolerance),
            60.0 if ttl is None else float(ttl))


def _inspect(conns: Connections, *, migrate: bool = False) -> tuple[Any, str | None, list]:
    """Connect once: apply migrations if asked, then the schema state and the schema the
    tables live in. Connection errors become a LedgerError without the password."""
    where = conns.url.location
    try:
        with conns.connect(autocommit=True) as conn:
            applied = schema.migrate(conn, where) if migrate else []
            state = schema.inspect(conn, where)
            name = conn.execute("SELECT current_schema()").fetchone()[0]
    except psycopg.Error as exc:
        raise conns.fail("cannot open the ledger", exc) from None
    return state, name, applied


class PostgresLedger(PostgresTransactions, PostgresClaims, Coordination, PostgresReads):
    """The PostgreSQL ledger (see the module docstring). Thread-safe.

    ``url``: the ``postgresql://`` URL (password included; never shown). ``create=False``
    refuses a database without a ledger schema (:class:`~archiver.errors.LedgerMissing`);
    with ``create=True`` that is a :class:`~archiver.errors.LedgerSchemaError` saying how
    to create it; ``migrate=True`` applies pending migrations first (``archiver ledger
    migrate``). ``outage_tolerance``: seconds an in-flight operation is retried while
    PostgreSQL does not answer; ``lease_ttl``: a heartbeat older than that is a dead
    holder (``lease_rows``)."""

    backend = BACKEND

    def __init__(self, url: str | PgUrl, *, create: bool = True, migrate: bool = False,
                 outage_tolerance: float = 60.0, lease_ttl: float = 60.0):
        self._url = parse(url) if isinstance(url, str) else url
        self._conns = Connections(self._url, tolerance=outage_tolerance)
        self.lease_ttl = float(lease_ttl)
        state, name, self.migrated = _inspect(self._conns, migrate=migrate)
        if state.version == 0 and not create and not migrate:
            missing = LedgerMissing(self.location)
            missing.args = (f"no ledger at {self.location} (the database has no ledger "
                            f"schema): {schema.migrate_hint(self.location)} to create it",)
            raise missing
        schema.require_current(state, self.location)
        self._lock_key = schema.lock_key(name)
        self._pid = os.getpid()
        self._lock = threading.Lock()   # the writer connection and the open transaction
        self._local = threading.local()  # .collected: the writes of an open batch()
        self._committer = _Committer(self._run_tx, f"ledger-writer {self.location}")
        self._chain = AuditChain(self._read_head, self._read_job_head, self._insert_audit)
        self._tx_conn: psycopg.Connection | None = None
        self._tx_pipe: psycopg.Pipeline | None = None
        self._head_row: tuple[int, str] | None = None
        self._tx_audits: list[dict[str, Any]] = []
        self._job_heads: dict[str, str | None] = {}
        self._audit_rows: list[tuple] = []

    def __repr__(self) -> str:
        return f"PostgresLedger({self.location!r})"

    @property
    def location(self) -> str:
        """The URL without its password."""
        return self._url.location

    # ------------------------------------------------------------------ reads
    def _exec(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        args = tuple(args) if not isinstance(args, tuple) else args
        return self._conns.read(lambda conn: conn.execute(sql, args or None).fetchall())

    # ------------------------------------------------------------------ jobs
    def _job_statement(self, job: Job, state: str, error: str | None,
                       now: float) -> tuple[str, tuple]:
        return UPSERT_JOB, (job.id, job.project_id, job.status, state, job.expires_at, error,
                            json.dumps(job.raw, sort_keys=True), now, now,
                            now if state == ARCHIVED else None, expires_ts(job.expires_at))

    def record_job(self, job: Job, state: str, error: str | None = None) -> None:
        self._tx([self._job_statement(job, state, error, time.time())],
                 audit={"kind": "job", "job_id": job.id, "message": state,
                        "data": job_facts(job, state, error)})

    # ------------------------------------------------------------------ artifacts, copies
    def record_artifact(self, job_id, path, *, kind, key, filename, size, received, state,
                        error) -> None:
        audit = None if state != "stored" else {
            "kind": "received", "job_id": job_id, "path": path, "data": {
                "kind": kind, "key": key, "size": size, "digests": received,
                "filename": filename}}
        row = (job_id, path, kind, key, filename, size, json.dumps(received), state, error,
               time.time())
        self._tx([(PUT_ARTIFACT, row)], audit=audit)

    def record_copy(self, job_id, path, stored: StoredObject, *, received, chain,
                    verified) -> None:
        retention = retention_facts(stored.extra)
        audits = [{"kind": "copy", "job_id": job_id, "path": path, "sink": stored.sink,
                   "message": stored.location or stored.key, "data": {
                       "key": stored.key, "location": stored.location,
                       "size": stored.size, "stored": stored.digests,
                       "received": received, "provider_checksum": stored.provider_checksum,
                       "existed": stored.existed, "verified": verified}}]
        if retention:
            audits.append({"kind": "retention", "job_id": job_id, "path": path,
                           "sink": stored.sink, "data": {"key": stored.key, **retention}})
        row = (job_id, path, stored.sink, stored.key, stored.location, stored.size,
               json.dumps(received), json.dumps(stored.digests),
               json.dumps(stored.provider_checksum), json.dumps(chain),
               json.dumps(stored.extra, default=str), bool(stored.existed), bool(verified),
               time.time())
        self._tx([(PUT_COPY, row)], audits=audits)

    # ------------------------------------------------------------------ pending writers
    def add_pending(self, sink: str, token: str, job_id: str | None, path: str | None, *,
                    owner: str | None = None) -> int:
        return int(self._write_now(lambda: self._q(
            "INSERT INTO pending (sink, token, job_id, path, started, owner)"
            " VALUES (%s,%s,%s,%s,%s,%s) RETURNING id",
            (sink, token, job_id, path, time.time(), owner)).fetchone()[0], "add_pending"))

    def update_pending(self, pending_id: int, token: str) -> None:
        self._write(lambda: self._q("UPDATE pending SET token=%s WHERE id=%s",
                                    (token, pending_id)))

    def remove_pending(self, pending_id: int) -> None:
        self._write(lambda: self._q("DELETE FROM pending WHERE id=%s", (pending_id,)))

    # ------------------------------------------------------------------ events
    def event(self, kind, message="", *, job_id=None, path=None, sink=None,
              data: dict[str, Any] | None = None) -> None:
        """An event, also appended to the audit chain with ``data`` (JSON-able facts)."""
        self._tx([(ADD_EVENT, (time.time(), kind, job_id, path, sink, message))],
                 audit={"kind": kind, "job_id": job_id, "path": path, "sink": sink,
                        "message": message, "data": data})

    # ------------------------------------------------------------------ bags, fixity
    def record_bag_file(self, job_id: str, sink: str, name: str, key: str, size: int,
                        digests: dict[str, Any]) -> None:
        self._tx([(PUT_BAG, (job_id, sink, name, key, size, json.dumps(digests),
                             time.time()))])

    def record_fixity(self, job_id: str, path: str, sink: str, ok: bool, message: str,
                      data: dict[str, Any]) -> None:
        now = time.time()
        self._tx([(PUT_FIXITY, (job_id, path, sink, now, bool(ok), message)),
                  (ADD_EVENT, (now, "fixity", job_id, path, sink, message))],
                 audit={"kind": "fixity", "job_id": job_id, "path": path, "sink": sink,
                        "message": message, "data": {"ok": ok, **data}})

    # ------------------------------------------------------------------ schema, close
    def schema_info(self) -> dict[str, Any]:
        state = self._conns.read(lambda conn: schema.inspect(conn, self.location))
        return schema.describe(state, self.backend, self.location)

    def close(self) -> None:
        """Commit what is queued, close the connections."""
        self._group().close()
        self._conns.close()


class PostgresReadOnlyLedger(PostgresReads):
    """The dry-run and inspection ledger (``open_ledger(..., read_only=True)``): reads
    only, on connections the server also holds read-only
    (``default_transaction_read_only``). It never creates or migrates: a database
    without a ledger schema reads as an empty ledger, an older schema is read as it is,
    a newer (or edited) one is refused. Every write method raises ``RuntimeError("dry
    run: ledger.X() would write to the ledger")``."""

    backend = BACKEND

    def __init__(self, url: str | PgUrl, *, outage_tolerance: float = 60.0,
                 lease_ttl: float = 60.0):
        self._url = parse(url) if isinstance(url, str) else url
        self._conns = Connections(self._url, tolerance=outage_tolerance, read_only=True)
        self.lease_ttl = float(lease_ttl)
        self._state, _, _ = _inspect(self._conns)
        schema.check(self._state, self.location)
        self._claims_schema = self._state.version >= 2

    def __repr__(self) -> str:
        return f"PostgresReadOnlyLedger({self.location!r})"

    @property
    def location(self) -> str:
        return self._url.location

    def _exec(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        if self._state.version == 0:
            return []
        args = tuple(args) if not isinstance(args, tuple) else args
        return self._conns.read(lambda conn: conn.execute(sql, args or None).fetchall())

    def schema_info(self) -> dict[str, Any]:
        return schema.describe(self._state, self.backend, self.location)

    def close(self) -> None:
        self._conns.close()

    def __getattr__(self, name: str):
        if name in WRITE_METHODS:
            raise RuntimeError(f"dry run: ledger.{name}() would write to the ledger")
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")


def open_postgres(url: str, *, settings: Any = None, create: bool = True,
                  read_only: bool = False, migrate: bool = False):
    """The opener registered for ``postgresql://`` and ``postgres://`` (see
    :func:`archiver.ledger.open_ledger`)."""
    tolerance, ttl = _settings_values(settings)
    if read_only:
        return PostgresReadOnlyLedger(url, outage_tolerance=tolerance, lease_ttl=ttl)
    try:
        return PostgresLedger(url, create=create, migrate=migrate,
                              outage_tolerance=tolerance, lease_ttl=ttl)
    except LedgerError:
        raise
    except psycopg.Error as exc:  # pragma: no cover - _inspect translates these
        raise LedgerError(f"ledger at {parse(url).location}: "
                          f"{parse(url).scrub(str(exc))}") from None
