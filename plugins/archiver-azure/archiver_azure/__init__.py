"""archiver-azure: an Azure Blob Storage sink for archiver, installed as a plugin.

Importing this package does not import the Azure SDK; the sink creates its client on
first use.
"""

from __future__ import annotations

from .config import AzureSinkConfig, Immutability
from .sink import AzureSink

__version__ = "0.1.0"
__all__ = ["AzureSink", "AzureSinkConfig", "Immutability", "__version__"]
