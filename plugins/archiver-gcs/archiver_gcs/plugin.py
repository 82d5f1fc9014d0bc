"""Entry point of the ``archiver-gcs`` distribution (group ``archiver``, name ``gcs``)."""

from __future__ import annotations

from archiver.hookspecs import hookimpl


@hookimpl
def archiver_register_sinks(register) -> None:
    from .sink import GCSSink

    register(GCSSink)
