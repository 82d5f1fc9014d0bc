"""Schema versions: numbered SQL files, a checksum each, and a small runner.

The files live in ``archiver/ledger/migrations/<dialect>/NNNN_name.sql`` (packaged with
archiver). A ledger records every migration applied to it in ``schema_migrations``
(version, name, sha256 of the file, when), so:

* its schema version is the highest version applied;
* a ledger from before schema versions (it has a ``jobs`` table but no
  ``schema_migrations``) is version 1, the schema ``0001_initial.sql`` reproduces; the
  runner records 0001 as applied and continues from 0002;
* a ledger at a version this archiver does not know (written by a newer release) is
  refused with :class:`~archiver.errors.LedgerSchemaError` before anything is written:
  an older release must not write rows a newer schema reads differently;
* an applied migration whose recorded checksum differs from this archiver's file is
  refused too: one of them was edited, and nobody can say what the schema really is.

Checksums are the SHA-256 of the file's text with line ends normalised to ``\\n`` (so a
checkout with CRLF line ends computes the same). Plain SQL, not Alembic: the project does
not use SQLAlchemy, and SQL files serve the PostgreSQL backend the same way (it runs them
under an advisory lock, explicitly, through ``archiver ledger migrate``).

SQLite upgrades itself on open (:func:`migrate_sqlite`, all pending migrations in one
``BEGIN IMMEDIATE`` transaction, so two processes opening an old ledger at once apply them
once).
"""

from __future__ import annotations

import functools
import hashlib
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import LedgerSchemaError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

CREATE_TABLE = ("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                " name TEXT, sha256 TEXT, applied_at REAL)")


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file of a dialect."""

    version: int
    name: str          # the file name without .sql: "0002_claims"
    sql: str
    sha256: str


@dataclass(frozen=True)
class Applied:
    """A row of ``schema_migrations``."""

    version: int
    name: str
    sha256: str
    applied_at: float | None


@dataclass(frozen=True)
class SchemaState:
    """What a ledger's schema is: its version, the migrations recorded as applied, and
    whether it predates ``schema_migrations`` (``legacy``: version 1 by its tables)."""

    version: int
    applied: tuple[Applied, ...] = ()
    legacy: bool = False


def checksum(text: str) -> str:
    return hashlib.sha256(text.replace("\r\n", "\n").encode("utf-8")).hexdigest()


@functools.cache
def known(dialect: str) -> tuple[Migration, ...]:
    """This archiver's migrations of ``dialect``, by version (1, 2, ... without gaps)."""
    out = []
    for path in sorted((MIGRATIONS_DIR / dialect).glob("*.sql")):
        m = _FILE.fullmatch(path.name)
        if m is None:
            raise LedgerSchemaError(f"{path}: not a migration file name (NNNN_name.sql)")
        text = path.read_text(encoding="utf-8")
        out.append(Migration(int(m.group(1)), path.stem, text, checksum(text)))
    for n, mig in enumerate(out, 1):
        if mig.version != n:
            raise LedgerSchemaError(f"{MIGRATIONS_DIR / dialect}: migration {n:04d} is missing "
                                    f"(found {mig.name})")
    return tuple(out)


def latest(dialect: str) -> int:
    """The highest schema version this archiver knows for ``dialect``."""
    return len(known(dialect))


def check(state: SchemaState, dialect: str, where: str) -> None:
    """Refuse a schema this archiver must not use (newer, or an applied migration edited)."""
    top = latest(dialect)
    if state.version > top:
        raise LedgerSchemaError(f"ledger at {where} has schema version {state.version}; this "
                                f"archiver knows up to {top}: upgrade archiver")
    mine = {m.version: m for m in known(dialect)}
    for applied in state.applied:
        m = mine.get(applied.version)
        if m is not None and applied.sha256 != m.sha256:
            raise LedgerSchemaError(
                f"ledger at {where}: migration {m.name} was applied with sha256 "
                f"{applied.sha256}, but this archiver's {m.name}.sql has sha256 {m.sha256}: "
                "one of them was edited after it was applied; refusing to use the ledger "
                "(restore the original migration file, or the ledger from a backup)")


def pending(state: SchemaState, dialect: str) -> list[Migration]:
    """Migrations still to apply to a ledger in ``state``."""
    return [m for m in known(dialect) if m.version > state.version]


def describe(state: SchemaState, dialect: str, backend: str, location: str) -> dict:
    """The ``schema_info()`` document of a ledger in ``state``."""
    return {"backend": backend, "location": location, "version": state.version,
            "known_version": latest(dialect), "legacy": state.legacy,
            "migrations": [{"version": a.version, "name": a.name, "sha256": a.sha256,
                            "applied_at": a.applied_at} for a in state.applied],
            "pending": [m.name for m in pending(state, dialect)]}


# --------------------------------------------------------------------------- SQLite
def _has_code(text: str) -> bool:
    return any(ln.strip().strip(";").strip() for ln in text.splitlines()
               if not ln.strip().startswith("--"))


def split_sql(sql: str) -> list[str]:
    """The statements of a script, one by one (``executescript`` would commit the open
    transaction first; a migration must run inside the runner's transaction). SQLite's
    own tokenizer (``complete_statement``) decides where a statement ends, so semicolons
    in comments, strings and trigger bodies are no problem."""
    out, buf = [], ""
    for part in sql.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if _has_code(buf):
                out.append(buf.strip())
            buf = ""
    if _has_code(buf.rstrip(";")):
        raise LedgerSchemaError(f"a migration ends in an incomplete statement: {buf[:200]!r}")
    return out


def inspect_sqlite(db: sqlite3.Connection) -> SchemaState:
    """The schema state of an SQLite ledger (any connection, read-only is enough)."""
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "schema_migrations" in tables:
        applied = tuple(Applied(*r) for r in db.execute(
            "SELECT version, name, sha256, applied_at FROM schema_migrations ORDER BY version"))
        return SchemaState(max((a.version for a in applied), default=0), applied)
    if "jobs" in tables:
        return SchemaState(1, (), legacy=True)
    return SchemaState(0)


def migrate_sqlite(db: sqlite3.Connection, where: str, *,
                   clock: Callable[[], float] = time.time) -> list[Migration]:
    """Bring an SQLite ledger (a connection in autocommit mode) to the latest version;
    returns the migrations applied now. All of them commit together or not at all."""
    state = inspect_sqlite(db)
    check(state, "sqlite", where)
    if not pending(state, "sqlite") and not state.legacy:
        return []
    db.execute("BEGIN IMMEDIATE")
    try:
        state = inspect_sqlite(db)  # another process may have migrated meanwhile
        check(state, "sqlite", where)
        todo = pending(state, "sqlite")
        db.execute(CREATE_TABLE)
        now = clock()
        record = "INSERT INTO schema_migrations (version, name, sha256, applied_at) VALUES (?,?,?,?)"
        if state.legacy:  # tables of version 1, made before schema_migrations existed
            for m in known("sqlite")[:state.version]:
                db.execute(record, (m.version, m.name, m.sha256, now))
        for m in todo:
            for statement in split_sql(m.sql):
                db.execute(statement)
            db.execute(record, (m.version, m.name, m.sha256, now))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return todo
