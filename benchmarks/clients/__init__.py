"""Baseline clients, each run as its own process by the scenarios (``python -m
benchmarks.clients.NAME``) so that its time and memory are measured like archiver's."""

import threading


def thread_session():
    """A function returning this thread's own ``requests.Session`` (made on first use):
    what a threaded client keeps alive per worker."""
    import requests

    local = threading.local()

    def session() -> "requests.Session":
        s = getattr(local, "session", None)
        if s is None:
            s = local.session = requests.Session()
        return s

    return session
