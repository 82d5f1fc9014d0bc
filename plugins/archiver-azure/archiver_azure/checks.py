"""Preflight (what a run needs, named permission by permission) and crash cleanup.

Preflight never makes anything visible: it reads a probe name (container exists, read
allowed), stages one block under ``<prefix>/.archiver-preflight/<uuid>`` (write allowed;
a staged block is never visible) and removes that uncommitted blob again (delete is
optional: without it staged blocks of aborted writers just expire after 7 days).

Cleanup: Azure has no "list uploads" and cannot delete one uncommitted block, but a blob
that has *only* uncommitted blocks is listed with ``include=uncommittedblobs`` and can be
deleted as a whole, with a condition that fails on any committed blob
(:data:`archiver_azure.store.NEVER`). Staged blocks of a name that also holds a committed
blob cannot be removed without touching that blob; the service drops them after 7 days.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Collection
from typing import TYPE_CHECKING

from archiver.errors import SinkError

from . import client as az

if TYPE_CHECKING:
    from .store import AzureStore

log = logging.getLogger("archiver_azure.checks")
PROBE_DIR = ".archiver-preflight"
PROBE_BODY = b"archiver preflight probe\n"

READ = "read: SAS permission 'r', or the role Storage Blob Data Reader " \
       "(Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read)"
WRITE = "write: SAS permission 'w', or the role Storage Blob Data Contributor " \
        "(.../containers/blobs/write)"
DELETE = "delete: SAS permission 'd', or .../containers/blobs/delete"
IMMUTABILITY = "SAS permission 'i' or .../blobs/immutableStorage/runAsSuperUser/action"


def _fail(store: "AzureStore", message: str) -> SinkError:
    return SinkError(f"sink {store.label!r}: container {store.container!r} at "
                     f"{store.account}: {message}")


def preflight(store: "AzureStore") -> None:
    """Container reachable and readable, writes allowed, immutability available when
    configured. SinkError naming the sink, the container and the missing permission."""
    name = "/".join(p for p in (store.prefix, PROBE_DIR, uuid.uuid4().hex) if p)
    blob = store.blob(name)
    try:
        blob.get_blob_properties()
        raise _fail(store, f"the probe name {name!r} exists unexpectedly")
    except SinkError:
        raise
    except Exception as exc:
        status, code = az.status_of(exc), az.code_of(exc)
        if status == 404 and code == "ContainerNotFound":
            raise _fail(store, "the container does not exist") from None
        if status != 404:  # HEAD has no body: 403 means a bad key or a missing permission
            raise _fail(store, "cannot read: " + az.describe(exc, store.secrets, READ)) \
                from None
    if store.config.immutability is not None:
        _immutability_enabled(store)
    block_id = az_block_id()
    try:
        blob.stage_block(block_id, PROBE_BODY, length=len(PROBE_BODY))
    except Exception as exc:
        raise _fail(store, "writing is not permitted: "
                    + az.describe(exc, store.secrets, WRITE)) from None
    outcome = store.remove_uncommitted(name, f"sink {store.label!r} preflight")
    if outcome.startswith("no delete permission"):
        log.warning("sink %s: the credentials cannot delete (%s): aborted uploads stay "
                    "invisible and expire after 7 days; 'archiver cleanup' cannot remove "
                    "them", store.label, DELETE)


def az_block_id() -> str:
    import base64
    return base64.b64encode(b"preflight-000000").decode()


def _immutability_enabled(store: "AzureStore") -> None:
    """The container must support version-level immutability (else Azure ignores or
    refuses the policy headers). Needs Get Container Properties (account key, Entra ID,
    or an account SAS); a container SAS cannot read it, which is reported as such."""
    try:
        props = store.client.get_container_properties()
    except Exception as exc:
        raise _fail(store, "cannot read the container's properties to check that "
                    "version-level immutability is enabled: "
                    + az.describe(exc, store.secrets, READ)) from None
    if not getattr(props, "immutable_storage_with_versioning_enabled", False):
        raise _fail(store, f"version-level immutability is not enabled on the container, "
                    f"but the sink asks for an immutability policy "
                    f"({store.config.immutability.mode}); enable it (it needs blob "
                    "versioning) or remove 'immutability'")


def cleanup(store: "AzureStore", older_than: float, spare: Collection[str]) -> list[str]:
    """Delete blobs below the prefix that hold only uncommitted blocks, last modified at
    least ``older_than`` seconds ago, except ``spare`` (writers open in this process)."""
    cutoff = time.time() - older_than
    start = f"{store.prefix}/" if store.prefix else ""
    removed = []
    try:
        listing = list(store.client.list_blobs(name_starts_with=start,
                                               include=["uncommittedblobs"]))
    except Exception as exc:
        raise store.error("List Blobs (uncommitted)", exc, None, "list ('l')") from None
    for item in listing:
        # A committed blob has an ETag-bearing HEAD; an uncommitted-only one 404s. Only
        # empty listings can be uncommitted-only, so larger blobs are never HEADed.
        if item.size or item.name in spare:
            continue
        modified = item.last_modified
        if modified is None or modified.timestamp() > cutoff:
            continue
        if store.head(item.name, item.name) is not None:
            continue
        outcome = store.remove_uncommitted(item.name, f"sink {store.label!r} cleanup")
        if outcome == "removed":
            removed.append(f"{store.label}: removed the staged blocks of "
                           f"azure://{store.account}/{store.container}/{item.name} "
                           f"(uncommitted, last staged {modified.isoformat()})")
    return removed
