"""Fixtures: a real Azurite on 127.0.0.1 for the session, containers and sinks on it.

Azurite comes from ``npm ci --prefix plugins/archiver-azure/azurite`` (``.ci/run`` does
it). Without it every test here is skipped with the install command, except under
``CI=true``, where a missing emulator is a failure, not a skip.
"""

from __future__ import annotations

import os
import uuid

import pytest

from archiver_azure.testing import INSTALL_HINT, azurite_binary, azurite_server



@pytest.fixture(scope="session")
def azurite():
    if azurite_binary() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    with azurite_server() as server:
        yield server


@pytest.fixture(scope="session")
def service(azurite):
    """A plain SDK client on the emulator (to look behind the sink)."""
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(azurite.connection_string())
    yield client
    client.close()


@pytest.fixture
def container(service) -> str:
    name = f"t-{uuid.uuid4().hex[:16]}"
    service.create_container(name)
    return name


@pytest.fixture
def make_sink(azurite, container):
    """``make_sink(**options)``: an AzureSink on Azurite (account key auth by default)."""
    from archiver_azure import AzureSink

    made = []

    def make(label: str = "azure-test", **options) -> AzureSink:
        options.setdefault("container", container)
        if not {"connection_string", "sas_token", "account_key"} & set(options):
            options["connection_string"] = azurite.connection_string()
        if "connection_string" not in options:
            options.setdefault("account_url", azurite.account_url)
        options.setdefault("retries", 0)
        options.setdefault("timeout", 10)
        sink = AzureSink(AzureSink.Config(**options), label=label)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()

