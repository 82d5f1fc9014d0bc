"""``open_ledger``: the one way to open the ledger a configuration names.

The ``ledger:`` section of the configuration (``Settings.ledger.url``) picks the backend by
URL scheme; without it the ledger is SQLite at ``state_dir/ledger.sqlite``, as it always
was. ``sqlite:///relative/path`` (relative to the working directory, like ``state_dir``)
and ``sqlite:////absolute/path`` select another SQLite file. Other backends come from
plugins: :data:`SCHEMES` maps a scheme to an opener. A plugin provides one through the
``archiver_register_ledgers`` hook, which :func:`archiver.plugins.build_plugin_manager`
calls (:func:`use_plugin_schemes`: the plugin manager built last decides which plugin
schemes are known); :func:`register_scheme` adds one by hand. ``postgresql://`` without
the archiver-postgres plugin is a clear error saying so (:data:`HINTS`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import LedgerError
from .protocols import Ledger

#: ``opener(url, *, settings, create, read_only) -> Ledger``
Opener = Callable[..., Ledger]

#: URL scheme -> opener. SQLite is built in; plugins add theirs with register_scheme().
SCHEMES: dict[str, Opener] = {}

#: Schemes known to need a plugin that is not installed: what to tell the user.
HINTS = {
    "postgresql": "ledger.url: PostgreSQL needs the archiver-postgres plugin "
                  "(pip install archiver-postgres)",
}
HINTS["postgres"] = HINTS["postgresql"]


#: Schemes in SCHEMES that came from plugins (``archiver_register_ledgers``): scheme -> plugin.
PLUGIN_SCHEMES: dict[str, str] = {}


def register_scheme(scheme: str, opener: Opener) -> None:
    """Make ``scheme://...`` ledger URLs open through ``opener``."""
    SCHEMES[scheme.lower()] = opener


def use_plugin_schemes(openers: dict[str, tuple[Opener, str]]) -> None:
    """The schemes plugins registered (``scheme -> (opener, plugin name)``) replace those of
    the plugin manager built before, so a plugin disabled since is forgotten; built-in
    schemes and those added with :func:`register_scheme` stay."""
    for scheme in PLUGIN_SCHEMES:
        SCHEMES.pop(scheme, None)
    PLUGIN_SCHEMES.clear()
    for scheme, (opener, plugin) in openers.items():
        SCHEMES[scheme.lower()] = opener
        PLUGIN_SCHEMES[scheme.lower()] = plugin


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///...`` URL: three slashes, then the path (so four for an
    absolute one, as in SQLAlchemy); percent-escapes decoded, ``~`` expanded, as
    ``LedgerSettings.sqlite_path`` reads it."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or parts.netloc or len(parts.path) < 2:
        raise LedgerError("ledger.url: not a SQLite URL: write sqlite:///relative/path or "
                          "sqlite:////absolute/path")
    return Path(unquote(parts.path[1:])).expanduser()


def _open_sqlite(url: str, *, settings: Any = None, create: bool = True,
                 read_only: bool = False) -> Ledger:
    return _sqlite(sqlite_path(url), create=create, read_only=read_only)


def _sqlite(path: Path, *, create: bool, read_only: bool) -> Ledger:
    if read_only:
        from .readonly import ReadOnlyLedger
        return ReadOnlyLedger(path, create=create)
    from .sqlite import SQLiteLedger
    return SQLiteLedger(path, create=create)


register_scheme("sqlite", _open_sqlite)


def ledger_url(settings: Any) -> str | None:
    """``settings.ledger.url`` as plain text (it may hold a password), or None."""
    section = getattr(settings, "ledger", None)
    url = getattr(section, "url", None)
    if url is None:
        return None
    url = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
    return url or None


def open_ledger(settings_or_state_dir: Any, *, create: bool = True,
                read_only: bool = False, migrate: bool = False) -> Ledger:
    """The configured ledger.

    ``settings_or_state_dir`` is an :class:`archiver.config.Settings` (its ``ledger:``
    section and ``state_dir``) or, as before, a ``state_dir`` path (SQLite in it).
    ``create=False`` refuses a ledger that does not exist yet
    (:class:`~archiver.errors.LedgerMissing`: commands that only read or inspect should
    not conjure up an empty ledger in a mistyped directory). ``read_only=True`` gives the
    dry-run ledger: nothing is created, migrated or written (write methods raise), a
    missing SQLite file reads as empty. A ledger of a newer schema raises
    :class:`~archiver.errors.LedgerSchemaError` without being touched. ``migrate=True``
    (``archiver ledger migrate``) applies pending migrations first: SQLite does on every
    open for writing anyway; a backend that never migrates implicitly (PostgreSQL) does
    only then, and is handed ``migrate=True`` (other openers never see the keyword).
    """
    if isinstance(settings_or_state_dir, (str, os.PathLike)):
        url, state_dir, settings = None, Path(settings_or_state_dir), None
    else:
        settings = settings_or_state_dir
        url, state_dir = ledger_url(settings), Path(settings.state_dir)
    if url is None:
        return _sqlite(state_dir / "ledger.sqlite", create=create, read_only=read_only)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    opener = SCHEMES.get(scheme)
    if opener is None:
        if scheme in HINTS:
            raise LedgerError(HINTS[scheme])
        what = f"unknown scheme {scheme!r}" if scheme else "not a URL (scheme://...)"
        raise LedgerError(f"ledger.url: {what} (known: {', '.join(sorted(SCHEMES))})")
    extra = {"migrate": True} if migrate and not read_only else {}
    return opener(url, settings=settings, create=create, read_only=read_only, **extra)
