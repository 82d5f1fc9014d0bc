"""Offline validation of the sink's options (what ``archiver config check`` reports)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from archiver_azure import AzureSink, AzureSinkConfig

URL = "https://acct.blob.core.windows.net"


def test_secrets_are_hidden_in_the_config_repr():
    cfg = AzureSinkConfig(container="data", account_url=URL, account_name="acct",
                          account_key="s3cr3t-account-key-value")
    assert "s3cr3t" not in repr(cfg) and "s3cr3t" not in repr(AzureSink(cfg, "x"))
    assert cfg.auth == "account_key"
    assert AzureSinkConfig(container="data", account_url=URL).auth == "default"


@pytest.mark.parametrize("options, message", [
    ({"container": "Bad_Name", "account_url": URL}, "not a container name"),
    ({"container": "data"}, "account_url is required"),
    ({"container": "data", "account_url": "https://u:p@acct.blob.core.windows.net"},
     "must not contain credentials"),
    ({"container": "data", "account_url": URL + "?sig=abc"}, "must not contain credentials"),
    ({"container": "data", "account_url": URL, "sas_token": "sv=1&sig=abc",
      "account_name": "a", "account_key": "k"}, "at most one of"),
    ({"container": "data", "account_url": URL, "account_key": "k"}, "needs account_name"),
    ({"container": "data", "account_url": URL, "metadata": {"job-id": "x"}}, "C# identifier"),
    ({"container": "data", "account_url": URL, "block_size": "1KiB"}, "greater than"),
    ({"container": "data", "account_url": URL, "immutability": {"mode": "Locked"}},
     "exactly one of"),
    ({"container": "data", "account_url": URL, "colour": "blue"}, "Extra inputs"),
])
def test_invalid_options_are_refused_offline(options, message):
    with pytest.raises(ValidationError, match=message):
        AzureSinkConfig(**options)


def test_the_sdk_is_not_imported_by_loading_the_plugin():
    import subprocess
    import sys
    code = ("import sys, archiver_azure.plugin; "
            "print([m for m in sys.modules if m.startswith('azure')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
