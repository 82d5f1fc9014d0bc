"""The archiver plugin: the ``notify:`` section and the hooks that feed the queues.

How a hook finds its configuration: archiver's observing hooks
(``archiver_job_done``, ``archiver_job_expiring``) do not say which configuration they
fire for, so the section object the core builds from each loaded config
(``archiver_register_sections``) makes itself the *current* notifier of the process.
One process runs one configuration (``run``, ``watch``, ``serve``, ``worker``, a Celery
worker), so the last config loaded is the one being run.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time

from archiver.hookspecs import hookimpl

from . import messages
from .config import NotifyConfig
from .delivery import EndpointQueue, Message

log = logging.getLogger("archiver.notify")

_lock = threading.Lock()
_current: Notifier | None = None
_live: list[Notifier] = []   # every notifier that may still hold messages (exit flush)


class Notifier:
    """The ``notify:`` section of one loaded config: one queue per endpoint."""

    name = "notify"        # the top-level YAML key
    Config = NotifyConfig

    def __init__(self, config: NotifyConfig):
        # Called by config loading (``config check`` too): no I/O, no thread here.
        self.config = config
        self.queues = [EndpointQueue(ep) for ep in config.endpoints]
        activate(self)

    def __repr__(self) -> str:
        return f"Notifier({', '.join(q.label for q in self.queues)})"

    def publish(self, event: str, project_id: str, job_id: str, doc: dict) -> None:
        bodies: dict[str, bytes] = {}
        for q in self.queues:
            if q.endpoint.wants(event, project_id):
                fmt = q.endpoint.format
                if fmt not in bodies:
                    bodies[fmt] = messages.render(fmt, doc)
                q.put(Message(event, job_id, bodies[fmt], messages.new_message_id()))

    def flush(self, timeout: float | None = None) -> int:
        """Deliver what is queued for at most ``timeout`` seconds (default: the
        section's ``flush_timeout``), then stop; returns the messages left undelivered."""
        deadline = time.monotonic() + (self.config.flush_timeout if timeout is None
                                       else timeout)
        left = 0
        for q in self.queues:
            n = q.flush(deadline)
            if n:
                log.warning("notify endpoint %s: %d message(s) not delivered before exit "
                            "(flush_timeout %g s)", q.label, n, self.config.flush_timeout)
            left += n
        return left


def activate(notifier: Notifier | None) -> None:
    """Make ``notifier`` the one the hooks feed (None: notifications off)."""
    global _current
    with _lock:
        _current = notifier
        if notifier is not None and notifier.queues:
            _live.append(notifier)


def current() -> Notifier | None:
    return _current


def flush_all(timeout: float | None = None) -> int:
    """Flush every notifier of this process (atexit; tests). Notifiers share the time."""
    with _lock:
        live = list(_live)
        _live.clear()
    return sum(n.flush(timeout) for n in live)


def _after_fork() -> None:
    # A forked child (multiprocessing, Celery prefork) inherits queues but no threads.
    global _lock
    _lock = threading.Lock()
    for n in _live:
        for q in n.queues:
            q.reset_after_fork()


atexit.register(flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


# ---------------------------------------------------------------------- hooks

@hookimpl
def archiver_register_sections(register):
    register(Notifier)


@hookimpl
def archiver_job_done(job, state, results):
    n = _current
    if n is not None and n.queues:
        n.publish(state, job.project_id, job.id, messages.job_event(job, state, results))


@hookimpl
def archiver_job_expiring(job, state, expires_in, message):
    n = _current
    if n is not None and n.queues:
        n.publish("expiring", job.project_id, job.id,
                  messages.expiring_event(job, state, expires_in, message))
