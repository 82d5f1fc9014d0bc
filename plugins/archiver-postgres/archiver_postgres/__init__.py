"""archiver-postgres: the PostgreSQL ledger of archiver (``ledger: {url: postgresql://…}``).

Importing the package imports no database driver; :class:`PostgresLedger`,
:class:`PostgresReadOnlyLedger` and :func:`open_postgres` are loaded on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PostgresLedger", "PostgresReadOnlyLedger", "open_postgres"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import ledger
        return getattr(ledger, name)
    raise AttributeError(f"module 'archiver_postgres' has no attribute {name!r}")
