"""The ``azure`` sink: block blobs in an Azure Storage container under an optional prefix.

This module is the :class:`~archiver.components.Sink` contract and nothing else; every
request goes through :class:`~archiver_azure.store.AzureStore`, ``writer.py`` holds the
upload protocol, ``checks.py`` preflight and cleanup, ``immutability.py`` the policy
read-back. The SDK is imported on the first request, never when the plugin is loaded.
"""

from __future__ import annotations

import json
import threading
import weakref
from contextlib import AbstractContextManager
from typing import Any, Iterator

from archiver.components import Sink
from archiver.errors import SinkError
from archiver.model import StoredObject

from . import checks
from .config import AzureSinkConfig
from .immutability import in_force
from .store import AzureStore
from .writer import AzureWriter


def blob_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """The caller's metadata as Azure accepts it: names must be C# identifiers, so
    ``job-id`` becomes ``job_id``; values printable ASCII, anything else %-escaped."""
    from urllib.parse import quote
    out = {}
    for k, v in (metadata or {}).items():
        name = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in str(k))
        name = name if name and not name[0].isdigit() else f"_{name}"
        out[name[:128]] = quote(str(v), safe=" !\"#$&'()*+,-./:;<=>?@[]^_`{|}~")
    out.pop("sha256", None)
    return out


class AzureSink(Sink):
    """Stores each object at ``azure://<account>/<container>/<prefix>/<key>``; never
    replaces one. Credentials are kept only in the config's secret fields (never in the
    repr, logs or error messages)."""

    name = "azure"
    Config = AzureSinkConfig
    memory_bound = "block_size × (1 + max_blocks_in_flight) per open writer (40 MiB with " \
                   "the defaults)"

    def __init__(self, config: AzureSinkConfig, label: str = ""):
        super().__init__(config, label)
        self.config: AzureSinkConfig = config
        self.memory_bound = (f"{config.memory_bound() / (1 << 20):g} MiB per open writer: "
                             "block_size × (1 + max_blocks_in_flight)")
        self.store = AzureStore(config, self.label)
        # Writers open in this process: discard() must stop them, cleanup() spare them.
        self._live: "weakref.WeakValueDictionary[str, AzureWriter]" = \
            weakref.WeakValueDictionary()
        self._live_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AzureSink(label={self.label!r}, location={self.describe('')!r}, " \
               f"auth={self.config.auth})"

    @property
    def client(self):
        """The SDK's ContainerClient (created on first use)."""
        return self.store.client

    def describe(self, key: str) -> str:
        return self.store.describe(key)

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ reading
    def stat(self, key: str) -> StoredObject | None:
        props = self.store.head(self.store.full_name(key), key)
        if props is None:
            return None
        sha = self.store.sha256_of(props)
        return self.store.stored(key, props, {"sha256": sha} if sha else {}, existed=True,
                                 verified_by="stored")

    def open_read(self, key: str) -> AbstractContextManager[Iterator[bytes]]:
        return self.store.stream(key)

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Committed keys below ``prefix`` (needs list permission, SAS 'l')."""
        return self.store.keys(prefix)

    # ------------------------------------------------------------------ immutability
    def retention(self, key: str) -> dict[str, Any] | None:
        """The policy a blob written at ``key`` now would receive (no I/O)."""
        imm = self.config.immutability
        if imm is None:
            return None
        out: dict[str, Any] = {"mode": imm.mode, "retain_until": imm.until().isoformat()}
        if imm.legal_hold:
            out["legal_hold"] = True
        return out

    def retention_in_force(self, key: str) -> dict[str, Any]:
        """The policy and legal hold Azure holds for ``key`` now (Get Blob Properties)."""
        props = self.store.head(self.store.full_name(key), key)
        if props is None:
            raise SinkError(f"{self.store.where(key)}: no such object")
        return in_force(props)

    # ------------------------------------------------------------------ writing
    def open_writer(self, key: str, metadata: dict[str, str] | None = None) -> AzureWriter:
        writer = AzureWriter(self, key, self.store.full_name(key), blob_metadata(metadata))
        with self._live_lock:
            self._live[writer.nonce] = writer
        return writer

    def forget(self, writer: AzureWriter) -> None:
        with self._live_lock:
            self._live.pop(writer.nonce, None)

    # ------------------------------------------------------------------ crash cleanup
    def discard(self, pending: str) -> None:
        """Remove the staged blocks a writer's ``pending`` token names.

        Blocks live under the blob's name, so this deletes that name only if it holds no
        committed blob (a conditional delete that fails on any committed blob); staged
        blocks beside a committed blob cannot be removed and expire after 7 days. They
        can never become visible: only their writer knows (and would commit) their ids.
        As in the core's contract, the writer's owner must be dead: a live writer of the
        same name in another process would lose its staged blocks (its commit then
        fails; nothing is corrupted)."""
        try:
            token = json.loads(pending)
            account, container = token["account"], token["container"]
            name, nonce = token["blob"], token["writer"]
            if not all(isinstance(v, str) and v for v in (account, container, name, nonce)):
                raise ValueError
        except (ValueError, TypeError, KeyError):
            raise SinkError(f"sink {self.label!r}: refusing to discard {pending!r}: not a "
                            "pending token of an azure writer") from None
        if (account, container) != (self.store.account, self.store.container):
            # The ledger is data: never send our credentials to act on another container.
            raise SinkError(f"sink {self.label!r}: refusing to discard a token of "
                            f"azure://{account}/{container}: not this sink's container")
        with self._live_lock:
            writer = self._live.get(nonce)
        if writer is not None:  # still open in this process: it must never commit now
            writer.discard()
            return
        self.store.remove_uncommitted(name, f"sink {self.label!r} discard")

    def preflight(self) -> None:
        checks.preflight(self.store)

    def cleanup(self, older_than: float) -> list[str]:
        with self._live_lock:
            spare = {w.name for w in self._live.values()}
        return checks.cleanup(self.store, older_than, spare)
