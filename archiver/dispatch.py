"""Dispatchers: hand queued jobs to workers elsewhere (``dispatch: {mode: NAME}``).

``dispatch.mode: local`` (the default) archives in this process or in its own worker
processes (``workers:``). Any other mode names a dispatcher registered by a plugin through
``archiver_register_dispatchers`` (the Celery plugin registers ``celery``); its options
are the top-level YAML section of the same name (``celery: {broker_url: …}``), validated
against the dispatcher's ``Config`` like a sink's options.

The ledger stays the truth: ``watch``/``serve`` list and triage jobs as always and put
those to archive on the ledger's queue (:meth:`RunLedger.enqueue`); a dispatcher only
rings the doorbell of remote workers with job ids. Workers claim each job through the
ledger, so a lost, delayed or repeated message costs at most a wasted claim, never a
second object or a second "archived" record. A dispatcher must therefore be safe to run
in several replicas at once (only the holder of the ledger's leader lease sends) and to
restart at any time (what it had sent is re-derived from the ledger).

Lifecycle, driven by :class:`archiver.service.Service`: ``start(rt, settings)`` once,
``drain()`` on the first stop signal, ``abort()`` on the second or when the grace period
is over, ``close(grace)`` at the end; ``stats()`` feeds ``/metrics`` and ``/healthz``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .components import Component

if TYPE_CHECKING:
    from .config_settings import DispatchSettings
    from .runtime import Runtime

#: The built-in mode: this process and its own worker processes.
LOCAL = "local"
#: The name of the ledger lease that elects the one dispatching replica.
LEADER_LEASE = "dispatcher"


class Dispatcher(Component):
    """Base of dispatcher plugins (see module doc). ``name`` is the ``dispatch.mode``."""

    #: Ledger schemes the dispatcher works with (every worker host must reach the
    #: ledger); ``dispatch.mode`` with another ledger is a configuration error.
    ledger_schemes: tuple[str, ...] = ("postgresql",)

    def start(self, rt: Runtime, settings: DispatchSettings) -> None:
        """Begin dispatching jobs that ``rt.ledger`` has queued (returns at once)."""
        raise NotImplementedError

    def drain(self) -> None:
        """Send nothing more; messages already sent stay with the broker."""

    def abort(self) -> None:
        """Stop now."""
        self.drain()

    def close(self, grace: float) -> None:
        """Release what :meth:`start` took (threads, connections, the leader lease),
        within ``grace`` seconds + a few."""

    def stats(self) -> dict[str, Any]:
        """Numbers for ``/metrics`` (name -> number; names without the ``archiver_``
        prefix, e.g. ``{"dispatch_outstanding": 3}``) and ``/healthz``."""
        return {}


__all__ = ["LEADER_LEASE", "LOCAL", "Dispatcher"]
