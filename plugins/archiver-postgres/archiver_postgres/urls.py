"""``postgresql://`` ledger URLs: what libpq gets, what people see, what must never show.

Pure (stdlib only), so the plugin module can import it without the driver. A URL is
``postgresql://user:password@host:port/dbname?param=value`` (``postgres://`` too), as
libpq reads it. The password may sit in the userinfo or in a ``password=`` parameter; it
goes to libpq only: :attr:`PgUrl.location` (``repr``, ``schema_info()``, every message)
is the URL without its userinfo (user and password) and secret parameters, and
:meth:`PgUrl.scrub` removes the password from any text (an error message of the driver)
before that text is shown; the parts that hold it show as ``Secret('***')``.

One parameter is archiver's own and removed before the URL reaches libpq:
``prepare_threshold`` (an integer, or ``none`` to never prepare statements: PgBouncer in
transaction mode before 1.21).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from archiver.errors import LedgerError

SCHEMES = ("postgresql", "postgres")
#: Query parameters whose value is a secret (libpq's ``password``; ``sslpassword``).
SECRET_PARAMS = frozenset({"password", "sslpassword"})
#: Query parameters that are archiver's, not libpq's.
OWN_PARAMS = frozenset({"prepare_threshold"})


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()  # prepare_threshold not given: psycopg's default


class Secret:
    """A text that shows as ``***`` (repr, str, tracebacks with locals)."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class PgUrl:
    """A parsed ledger URL; ``conninfo`` (what libpq gets) holds the password."""

    secret_conninfo: Secret = field(repr=False)
    location: str
    secret_parts: tuple[Secret, ...] = field(default=(), repr=False)
    prepare_threshold: object = DEFAULT

    @property
    def conninfo(self) -> str:
        return self.secret_conninfo.get()

    def scrub(self, text: str) -> str:
        """``text`` with every form of the password (and the full URL) replaced."""
        secrets = {self.conninfo, *(s.get() for s in self.secret_parts)}
        for secret in sorted(secrets, key=len, reverse=True):
            if secret:
                text = text.replace(secret, "***")
        return text


def parse(url: str) -> PgUrl:
    """Split a ledger URL; a malformed one is a :class:`LedgerError` naming the URL
    without its password."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise LedgerError("ledger.url: not a valid postgresql:// URL") from None
    if parts.scheme.lower() not in SCHEMES:
        raise LedgerError("ledger.url: not a postgresql:// URL")
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    _user, colon, password = userinfo.partition(":")
    secrets = [password, unquote(password)] if colon and password else []
    # Query parameters are kept as written (libpq decodes %XX but not "+").
    kept, shown, own = [], [], {}
    for piece in filter(None, parts.query.split("&")):
        raw_key, _, raw_value = piece.partition("=")
        key, value = unquote(raw_key), unquote(raw_value)
        if key in OWN_PARAMS:
            own[key] = value
            continue
        kept.append(piece)
        if key in SECRET_PARAMS:
            secrets += [raw_value, value] if value else []
        else:
            shown.append(piece)
    shown_netloc = hostinfo if at else parts.netloc  # no user, no password, no "@"
    location = urlunsplit((parts.scheme, shown_netloc, parts.path, "&".join(shown), ""))
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(kept), ""))
    threshold: object = DEFAULT
    if "prepare_threshold" in own:
        raw = own["prepare_threshold"].strip().lower()
        if raw in ("none", "null", ""):
            threshold = None
        elif raw.isdigit():
            threshold = int(raw)
        else:
            raise LedgerError(f"ledger.url {location}: prepare_threshold must be a whole "
                              "number or none")
    parts_kept = tuple(Secret(s) for s in dict.fromkeys(secrets) if s)
    return PgUrl(Secret(conninfo), location, parts_kept, threshold)
