"""Helpers shared by the Azure plugin's tests (a module name of its own, unlike conftest,
so that a run collecting every plugin's tests imports the right one)."""

from __future__ import annotations

KiB, MiB = 1 << 10, 1 << 20


def uncommitted(service, container: str) -> list[str]:
    """Names holding only staged (uncommitted) blocks."""
    c = service.get_container_client(container)
    committed = set(c.list_blob_names())
    return [b.name for b in c.list_blobs(include=["uncommittedblobs"])
            if b.name not in committed]
