"""archiver-celery: Celery workers and dispatch for archiver.

Workers start the way Celery users expect::

    ARCHIVER_CONFIG=/etc/archiver/archiver.yaml celery -A archiver_celery worker

``archiver_celery.app`` (also ``archiver_celery.celery``) is the Celery app built from the
config file named by ``ARCHIVER_CONFIG``. Importing the package imports no Celery: the
``archiver`` entry point loads :mod:`archiver_celery.plugin`, and ``archiver --help`` must
stay fast; the app is built on first access.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "celery"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from archiver.errors import ArchiverError

        from .app import default_app
        try:
            return default_app()
        except ArchiverError as exc:
            # `celery -A archiver_celery` would print our bad config as a traceback
            import sys
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    raise AttributeError(f"module 'archiver_celery' has no attribute {name!r}")
