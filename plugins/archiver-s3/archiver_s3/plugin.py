"""archiver plugin ``s3``: registers the S3 sink (found through the ``archiver`` entry point)."""

from __future__ import annotations

from archiver.hookspecs import hookimpl

from .sink import S3Sink


@hookimpl
def archiver_register_sinks(register):
    register(S3Sink)
