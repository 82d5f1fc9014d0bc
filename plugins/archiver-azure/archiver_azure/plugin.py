"""archiver plugin ``azure``: registers the Azure Blob Storage sink (entry point ``archiver``).

Importing this module imports neither azure-storage-blob nor azure-identity.
"""

from __future__ import annotations

from archiver.hookspecs import hookimpl

from .sink import AzureSink


@hookimpl
def archiver_register_sinks(register):
    register(AzureSink)
