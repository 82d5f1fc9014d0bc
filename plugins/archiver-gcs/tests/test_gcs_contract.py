"""The shared sink contract (archiver.testing.sink_contract) against fake-gcs-server."""

from __future__ import annotations

import pytest

from archiver.testing.sink_contract import SinkContract


class TestGCSSinkContract(SinkContract):
    """Default thresholds: objects up to 8 MiB go as one multipart upload."""

    @pytest.fixture
    def sink(self, make_sink):
        return make_sink()


class TestGCSResumableContract(SinkContract):
    """Every non-empty object through a resumable session fed in 256 KiB chunks."""

    @pytest.fixture
    def sink(self, make_sink):
        return make_sink(simple_upload_threshold=0, checksum="both")
