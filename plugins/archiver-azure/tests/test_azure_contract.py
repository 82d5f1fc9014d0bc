"""The sink contract suite every archiver sink passes, run against Azure (Azurite).

Small blocks make the suite's larger objects go through staged blocks and one Put Block
List, and the small ones through Put Blob, so both upload paths meet every rule.
"""

from __future__ import annotations

import pytest

from archiver.testing.sink_contract import SinkContract

MiB = 1 << 20


class TestAzureSinkContract(SinkContract):
    """1 MiB blocks, 2 in flight; under a prefix; connection-string auth."""

    @pytest.fixture
    def sink(self, make_sink):
        return make_sink(prefix="contract-root", block_size=MiB, max_blocks_in_flight=2)


class TestAzureSinkContractAccountKey(SinkContract):
    """Account-key auth, 64 KiB blocks (many blocks per object), no prefix."""

    large_object_size = 2 * MiB + 12345

    @pytest.fixture
    def sink(self, make_sink, azurite):
        return make_sink(account_name=azurite.account, account_key=azurite.key,
                         block_size=64 << 10, max_blocks_in_flight=4)
