"""The read-only ledger: dry runs (``--dry-run``) and inspection (``archiver ledger status``).

It opens the SQLite file without creating or changing anything: with no ``-wal`` file
pending, the database file is complete and ``immutable=1`` reads it without even
creating ``-wal``/``-shm`` files (``mode=ro`` would); with one, ``mode=ro``. A missing
file reads as an empty ledger (unless ``create=False``: then it is
:class:`~archiver.errors.LedgerMissing`). It never migrates: a ledger of an older schema
is read as it is (no claims, no workers), one of a newer schema is refused like
:class:`~archiver.ledger.sqlite.SQLiteLedger` refuses it.

Every read of :class:`~archiver.ledger.sqlite_reads.SQLiteReads` works; every write
method of the ledger raises ``RuntimeError("dry run: ledger.X() would write to the
ledger")``, so a dry run that would write fails loudly instead of writing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import LedgerError, LedgerMissing
from . import migrations
from .sqlite_reads import SQLiteReads

#: Methods of the Ledger protocols that write (a dry run must not call them).
WRITE_METHODS = frozenset({
    "batch", "record_job", "record_artifact", "record_copy", "add_pending", "update_pending",
    "remove_pending", "event", "record_bag_file", "record_fixity", "register_worker",
    "unregister_worker", "heartbeat", "claim", "claim_next", "enqueue", "finish_job",
    "release", "forget_dead_workers", "expire_worker", "take_lease", "drop_lease",
    "take_tokens", "pause_tokens"})


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """A connection that can neither write ``path`` nor create files beside it."""
    pending = Path(f"{path}-wal").exists()
    mode = "mode=ro" if pending else "immutable=1"
    return sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True, timeout=30,
                           check_same_thread=False)


class ReadOnlyLedger(SQLiteReads):
    """The ledger at ``path``, for reading only."""

    backend = "sqlite"

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._state = migrations.SchemaState(0)
        if not self.path.exists():
            if not create:
                raise LedgerMissing(self.path)
            return
        self._db = connect_readonly(self.path)
        try:
            self._state = migrations.inspect_sqlite(self._db)
            migrations.check(self._state, "sqlite", str(self.path))
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise LedgerError(f"ledger at {self.path}: cannot be read ({exc})") from exc
        except BaseException:
            self._db.close()
            raise
        self._claims_schema = self._state.version >= 2

    def __repr__(self) -> str:
        return f"ReadOnlyLedger({str(self.path)!r})"

    @property
    def location(self) -> str:
        return str(self.path)

    def _exec(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        if self._db is None or self._state.version == 0:
            return []
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def schema_info(self) -> dict[str, Any]:
        return migrations.describe(self._state, "sqlite", self.backend, self.location)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def __getattr__(self, name: str):
        if name in WRITE_METHODS:
            raise RuntimeError(f"dry run: ledger.{name}() would write to the ledger")
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")
