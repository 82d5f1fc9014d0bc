"""Schema versions of the PostgreSQL ledger: numbered SQL files and their runner.

The files are ``archiver_postgres/migrations/NNNN_name.sql`` (packaged with the plugin).
The rules are those of :mod:`archiver.ledger.migrations` (whose dataclasses and checksum
are reused): the ledger records every migration applied in ``schema_migrations(version,
name, sha256, applied_at)``; its version is the highest applied; a newer version, or an
applied migration whose checksum differs from this plugin's file, is refused
(:class:`~archiver.errors.LedgerSchemaError`) before anything is written.

Unlike SQLite, migration is explicit: only ``archiver ledger migrate`` (``open_ledger(...,
migrate=True)``) applies migrations, also the first ones (an empty database gets its
tables that way). Workers opening a ledger of an older schema, or none, refuse to start
(:func:`require_current`), so a fleet is never upgraded half-way by whichever worker
starts first. :func:`migrate` applies every pending migration in one transaction (DDL is
transactional in PostgreSQL) under ``pg_advisory_xact_lock``, so two ``migrate`` runs at
once apply each migration once; the lock is transaction-scoped (PgBouncer-safe).
"""

from __future__ import annotations

import functools
import re
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archiver.errors import LedgerSchemaError
from archiver.ledger.migrations import Applied, Migration, SchemaState, checksum

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

#: Advisory lock classes (the first key of pg_advisory_xact_lock(int, int)); the second
#: key is :func:`lock_key` of the schema, so ledgers in different schemas do not contend.
AUDIT_LOCK = 0x61726368    # "arch": appending to the audit chain
MIGRATE_LOCK = 0x6D696772  # "migr": running migrations

CREATE_TABLE = ("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, sha256 text NOT NULL,"
                " applied_at double precision NOT NULL)")


def migrate_hint(where: str) -> str:
    """What to do about a schema older than this plugin's (``FILE``: the configuration)."""
    return "run `archiver ledger migrate -c FILE`"


def lock_key(schema: str | None) -> int:
    """A signed 32-bit key for ``schema`` (the ledger's tables' schema)."""
    key = zlib.crc32((schema or "").encode("utf-8"))
    return key - (1 << 32) if key >= 1 << 31 else key


@functools.cache
def known() -> tuple[Migration, ...]:
    """This plugin's migrations, by version (1, 2, ... without gaps)."""
    out = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        m = _FILE.fullmatch(path.name)
        if m is None:
            raise LedgerSchemaError(f"{path}: not a migration file name (NNNN_name.sql)")
        text = path.read_text(encoding="utf-8")
        out.append(Migration(int(m.group(1)), path.stem, text, checksum(text)))
    for n, mig in enumerate(out, 1):
        if mig.version != n:
            raise LedgerSchemaError(f"{MIGRATIONS_DIR}: migration {n:04d} is missing "
                                    f"(found {mig.name})")
    return tuple(out)


def latest() -> int:
    return len(known())


def inspect(conn: Any, where: str) -> SchemaState:
    """The schema state of the ledger ``conn``'s search_path leads to."""
    has_versions, has_jobs = conn.execute(
        "SELECT to_regclass('schema_migrations') IS NOT NULL,"
        " to_regclass('jobs') IS NOT NULL").fetchone()
    if has_versions:
        applied = tuple(Applied(*r) for r in conn.execute(
            "SELECT version, name, sha256, applied_at FROM schema_migrations ORDER BY version"))
        return SchemaState(max((a.version for a in applied), default=0), applied)
    if has_jobs:
        raise LedgerSchemaError(f"ledger at {where}: a jobs table without schema_migrations "
                                "is not an archiver ledger (another application's tables? "
                                "give the ledger a database or schema of its own)")
    return SchemaState(0)


def check(state: SchemaState, where: str) -> None:
    """Refuse a schema this plugin must not use (newer, or an applied migration edited)."""
    top = latest()
    if state.version > top:
        raise LedgerSchemaError(f"ledger at {where} has schema version {state.version}; this "
                                f"archiver-postgres knows up to {top}: upgrade it")
    mine = {m.version: m for m in known()}
    for applied in state.applied:
        m = mine.get(applied.version)
        if m is not None and applied.sha256 != m.sha256:
            raise LedgerSchemaError(
                f"ledger at {where}: migration {m.name} was applied with sha256 "
                f"{applied.sha256}, but this archiver-postgres's {m.name}.sql has sha256 "
                f"{m.sha256}: one of them was edited after it was applied; refusing to use "
                "the ledger (restore the original migration file, or the ledger from a "
                "backup)")


def require_current(state: SchemaState, where: str) -> None:
    """What a worker checks on open: exactly the schema this plugin writes."""
    check(state, where)
    if state.version == 0:
        raise LedgerSchemaError(f"ledger at {where} has no schema yet: {migrate_hint(where)} "
                                "to create it")
    if state.version < latest():
        names = ", ".join(m.name for m in pending(state))
        raise LedgerSchemaError(f"ledger at {where} has schema version {state.version}; this "
                                f"archiver needs {latest()} ({names} pending): "
                                f"{migrate_hint(where)}")


def pending(state: SchemaState) -> list[Migration]:
    return [m for m in known() if m.version > state.version]


def describe(state: SchemaState, backend: str, location: str) -> dict:
    """The ``schema_info()`` document."""
    return {"backend": backend, "location": location, "version": state.version,
            "known_version": latest(), "legacy": False,
            "migrations": [{"version": a.version, "name": a.name, "sha256": a.sha256,
                            "applied_at": a.applied_at} for a in state.applied],
            "pending": [m.name for m in pending(state)]}


def migrate(conn: Any, where: str, *, upto: int | None = None,
            clock: Callable[[], float] = time.time) -> list[Migration]:
    """Apply the pending migrations (up to version ``upto``) in one transaction, under
    the migration lock; returns those applied now. ``conn``: a psycopg connection in
    autocommit mode, not in a transaction."""
    with conn.transaction():
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        if schema is None:
            raise LedgerSchemaError(f"ledger at {where}: no schema to create the tables in "
                                    "(the search_path names no existing schema: CREATE "
                                    "SCHEMA it first)")
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (MIGRATE_LOCK, lock_key(schema)))
        state = inspect(conn, where)  # read under the lock: another run may have migrated
        check(state, where)
        todo = [m for m in pending(state) if upto is None or m.version <= upto]
        if not todo:
            return []
        conn.execute(CREATE_TABLE)
        now = clock()
        for m in todo:
            conn.execute(m.sql.encode("utf-8"))  # no parameters: one script, many statements
            conn.execute("INSERT INTO schema_migrations (version, name, sha256, applied_at)"
                         " VALUES (%s, %s, %s, %s)", (m.version, m.name, m.sha256, now))
    return todo
