"""The sink contract suite every archiver sink passes, run against S3 (moto server).

Small thresholds make the suite's larger objects go through multipart uploads, so both
upload paths meet every rule of the contract.
"""

from __future__ import annotations

import pytest

from archiver.testing.sink_contract import SinkContract

MiB = 1 << 20


class TestS3SinkContract(SinkContract):
    """SHA256 checksums; objects above 5 MiB use a multipart upload (composite checksum)."""

    @pytest.fixture
    def sink(self, make_sink):
        return make_sink(prefix="contract-root", part_size=5 * MiB,
                         multipart_threshold=5 * MiB)


class TestS3SinkContractCRC32C(SinkContract):
    """CRC32C checksums; objects above 1 MiB use a multipart upload (full-object CRC32C)."""

    @pytest.fixture
    def sink(self, make_sink):
        return make_sink(checksum_algorithm="CRC32C", part_size=5 * MiB,
                         multipart_threshold=1 * MiB)
