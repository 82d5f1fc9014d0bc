"""Stops that stop, for the sink's boto3 client (see :mod:`archiver.cancel`).

A part upload blocked in ``send``/``recv`` (S3 or the network stalled) checks no flag: a
stop must cut its socket. botocore builds its urllib3 pools from a per-session mapping of
pool classes (``URLLib3Session._pool_classes_by_scheme``, shared with its pool managers);
:func:`make_cancellable` points that mapping, for this one client only, at pools whose
connections are :class:`archiver.cancel.CancellableConnection`, so every request's socket
joins the scope of the thread sending it. Nothing global is patched.

A ``needs-retry`` handler makes botocore give up at once (no retry, no backoff sleep)
when the failure came from a stop: it raises :class:`archiver.cancel.Cancelled`.
"""

from __future__ import annotations

import logging

from archiver import cancel

log = logging.getLogger("archiver_s3.sink")

_pools: dict | None = None


def _pool_classes() -> dict:
    global _pools
    if _pools is None:
        from botocore.awsrequest import (AWSHTTPConnection, AWSHTTPConnectionPool,
                                         AWSHTTPSConnection, AWSHTTPSConnectionPool)

        class Connection(cancel.CancellableConnection, AWSHTTPConnection):
            pass

        class HTTPSConnection(cancel.CancellableConnection, AWSHTTPSConnection):
            pass

        class Pool(AWSHTTPConnectionPool):
            ConnectionCls = Connection

        class HTTPSPool(AWSHTTPSConnectionPool):
            ConnectionCls = HTTPSConnection

        _pools = {"http": Pool, "https": HTTPSPool}
    return _pools


def _no_retry_after_a_stop(**kwargs) -> None:
    """botocore ``needs-retry`` handler: a request cut by a stop is not retried."""
    if cancel.cancelled():
        raise cancel.Cancelled("stopped: the S3 request was cut")


def make_cancellable(client, label: str) -> bool:
    """Make ``client``'s connections cancellable; False (and a debug line) when this
    botocore does not have the expected shape: stops then wait for ``read_timeout``."""
    client.meta.events.register_first("needs-retry.s3", _no_retry_after_a_stop,
                                      "archiver-s3-no-retry-after-stop")
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    classes = getattr(session, "_pool_classes_by_scheme", None)
    if not isinstance(classes, dict):
        log.debug("sink %s: this botocore has no pool class mapping; a stop waits for "
                  "the read timeout of requests in flight", label)
        return False
    classes.update(_pool_classes())  # the managers hold this very dict (no pool exists yet)
    return True
