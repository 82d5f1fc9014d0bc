"""The ledger URL's password never shows: not in errors, reprs, locations or logs."""

from __future__ import annotations

import logging
import traceback
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from archiver_postgres import PostgresLedger
from archiver_postgres.urls import parse
from pydantic import SecretStr

from archiver.errors import LedgerError
from archiver.ledger import open_ledger
from archiver.plugins import build_plugin_manager

SECRET = "S3cret_pw-42"


@pytest.fixture(autouse=True)
def plugins_registered():
    build_plugin_manager()


def settings(url: str, tolerance: float = 1.0) -> SimpleNamespace:
    return SimpleNamespace(state_dir=".", ledger=SimpleNamespace(url=SecretStr(url),
                                                                 outage_tolerance=tolerance))


def everything(exc: BaseException) -> str:
    """All a traceback would show, the chained exceptions included."""
    out = "".join(traceback.format_exception(exc)) + repr(exc)
    while exc.__context__ is not None or exc.__cause__ is not None:
        exc = exc.__cause__ or exc.__context__
        out += "".join(traceback.format_exception(exc)) + repr(exc)
    return out


@pytest.mark.parametrize("url", [
    f"postgresql://nobody_archiver:{SECRET}@127.0.0.1:5432/test",      # refused by the server
    f"postgresql://postgres:{SECRET}@127.0.0.1:1/test",               # nobody listens there
    f"postgresql://postgres@127.0.0.1:1/test?password={quote(SECRET)}",  # the password param
    f"postgres://postgres:{quote(SECRET + '@/:', safe='')}@127.0.0.1:1/test",   # escaped characters
], ids=["wrong-user", "unreachable", "password-param", "escaped"])
def test_a_failing_open_never_shows_the_password(pg_admin, url, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LedgerError) as err:
        open_ledger(settings(url))
    text = str(err.value)
    assert text.startswith("ledger at postgres") and "cannot open the ledger" in text
    assert SECRET not in everything(err.value) and quote(SECRET) not in everything(err.value)
    assert "@" not in text.split(":", 1)[1].split(": cannot")[0]  # no userinfo in the URL
    assert SECRET not in caplog.text


def test_repr_location_and_schema_info_of_an_open_ledger(ledger_url, caplog):
    url = ledger_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")
    assert SECRET in url  # trust authentication accepts any password
    led = open_ledger(settings(url))
    try:
        assert isinstance(led, PostgresLedger)
        led.event("note", "hello")
        shown = [repr(led), led.location, str(led.schema_info()), str(led.summary()),
                 repr(led._conns.url), repr(vars(led._url))]
        for text in shown:
            assert SECRET not in text
        assert led.location.startswith("postgresql://127.0.0.1:5432/test?options=")
    finally:
        led.close()
    assert SECRET not in caplog.text


def test_scrub_removes_every_form_of_the_password():
    url = parse(f"postgresql://u:{quote(SECRET + '%')}@h/db?sslpassword=other&password=third")
    text = f"x {SECRET}% y {quote(SECRET + '%')} other third {url.conninfo}"
    cleaned = url.scrub(text)
    assert SECRET not in cleaned and "other" not in cleaned and "third" not in cleaned
    assert url.location == "postgresql://h/db"
    assert "u:" not in repr(url) and SECRET not in repr(url)
