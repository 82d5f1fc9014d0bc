"""archiver-s3: an S3 (and S3-compatible) sink for archiver, installed as a plugin.

Importing this package does not import boto3; the sink creates its client on first use.
"""

from __future__ import annotations

from .config import ObjectLock, S3SinkConfig
from .sink import S3Sink

__version__ = "0.1.0"
__all__ = ["ObjectLock", "S3Sink", "S3SinkConfig", "__version__"]
