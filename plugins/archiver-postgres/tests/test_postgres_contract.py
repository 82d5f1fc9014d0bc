"""The ledger contract (archiver.testing.ledger_contract) against PostgreSQL: every test
on a fresh schema of its own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from archiver_postgres import PostgresLedger
from pydantic import SecretStr

from archiver.ledger import open_ledger
from archiver.plugins import build_plugin_manager
from archiver.testing.ledger_contract import LedgerContract


def settings(url: str, **ledger) -> SimpleNamespace:
    return SimpleNamespace(state_dir=".", ledger=SimpleNamespace(url=SecretStr(url), **ledger))


@pytest.fixture(scope="module", autouse=True)
def plugins_registered():
    """The schemes come from the plugin manager, as in every command."""
    build_plugin_manager()


class TestPostgresLedger(LedgerContract):
    @pytest.fixture
    def ledger(self, ledger_url):
        led = open_ledger(settings(ledger_url))
        assert isinstance(led, PostgresLedger)
        yield led
        led.close()

    @pytest.fixture
    def reopen(self, ledger_url):
        return lambda: open_ledger(settings(ledger_url))
