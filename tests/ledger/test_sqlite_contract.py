"""The ledger contract (archiver.testing.ledger_contract) against the SQLite backend."""

from __future__ import annotations

import pytest

from archiver.ledger import SQLiteLedger, open_ledger
from archiver.testing.ledger_contract import LedgerContract


class TestSQLiteLedger(LedgerContract):
    @pytest.fixture
    def ledger(self, tmp_path):
        led = open_ledger(tmp_path)
        assert isinstance(led, SQLiteLedger)
        yield led
        led.close()

    @pytest.fixture
    def reopen(self, tmp_path):
        return lambda: open_ledger(tmp_path)
