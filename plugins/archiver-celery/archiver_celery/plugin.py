"""archiver plugin ``celery``: registers the ``celery`` dispatcher (``dispatch.mode:
celery``), found through the ``archiver`` entry point.

Importing this module imports no Celery: :mod:`archiver_celery.app` imports it when a
dispatcher starts or a worker builds the app.
"""

from __future__ import annotations

from archiver.hookspecs import hookimpl


@hookimpl
def archiver_register_dispatchers(register):
    from .dispatcher import CeleryDispatcher
    register(CeleryDispatcher)
