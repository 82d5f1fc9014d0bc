"""archiver plugin ``postgres``: registers the PostgreSQL ledger for ``postgresql://`` and
``postgres://`` URLs (found through the ``archiver`` entry point).

Importing this module imports no database driver and connects nowhere: ``psycopg`` is
imported when a ledger is opened (after any fork), not when the plugin registers.
"""

from __future__ import annotations

from typing import Any

from archiver.hookspecs import hookimpl

SCHEMES = ("postgresql", "postgres")


def open_postgres(url: str, *, settings: Any = None, create: bool = True,
                  read_only: bool = False, migrate: bool = False):
    """Open the ledger at ``url`` (see :func:`archiver_postgres.ledger.open_postgres`)."""
    from .ledger import open_postgres as opener
    return opener(url, settings=settings, create=create, read_only=read_only,
                  migrate=migrate)


@hookimpl
def archiver_register_ledgers(register):
    for scheme in SCHEMES:
        register(scheme, open_postgres)
