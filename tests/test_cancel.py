"""archiver.cancel: a stop cuts sockets that a thread is blocked on (real sockets on
127.0.0.1, a server that accepts and then says nothing)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from archiver import cancel

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def silent_server():
    """``http://127.0.0.1:PORT``: accepts connections, reads, never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    conns, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conns.append(conn)
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()
    for c in conns:
        c.close()


def _in_thread(fn):
    box: dict = {}

    def run():
        t0 = time.monotonic()
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc
        box["elapsed"] = time.monotonic() - t0
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_cancel_wakes_a_thread_blocked_in_recv(silent_server):
    c = cancel.Canceller()
    host, port = silent_server[7:].split(":")

    def blocked():
        with c.scope():
            sock = socket.create_connection((host, int(port)))
            cancel.watch_socket(sock)
            sock.settimeout(60)
            return sock.recv(10)
    t, box = _in_thread(blocked)
    time.sleep(0.3)
    assert t.is_alive()
    c.cancel()
    t.join(3)
    assert not t.is_alive() and box["elapsed"] < 3
    assert box.get("value") == b"" or isinstance(box.get("error"), OSError)


def test_a_socket_watched_after_the_stop_is_cut_at_once(silent_server):
    c = cancel.Canceller()
    c.cancel()
    host, port = silent_server[7:].split(":")
    with c.scope():
        assert cancel.cancelled()
        with pytest.raises(cancel.Cancelled):
            cancel.check()
        sock = socket.create_connection((host, int(port)))
        cancel.watch_socket(sock)
        sock.settimeout(5)
        t0 = time.monotonic()
        assert sock.recv(10) == b""
        assert time.monotonic() - t0 < 1
        sock.close()


def test_requests_through_the_adapter_are_cancelled_not_retried(silent_server):
    c = cancel.Canceller()
    session = requests.Session()
    cancel.mount_cancellable(session)

    def get():
        with c.scope():
            return session.get(silent_server + "/x", timeout=(5, 60))
    t, box = _in_thread(get)
    time.sleep(0.3)
    c.cancel()
    t.join(3)
    assert not t.is_alive() and box["elapsed"] < 3
    assert isinstance(box.get("error"), cancel.Cancelled)
    # after the stop, nothing is even sent
    with c.scope(), pytest.raises(cancel.Cancelled):
        session.get(silent_server + "/y", timeout=(5, 60))


def test_cleanup_scopes_get_a_budget_then_are_cut(silent_server):
    c = cancel.Canceller(cleanup_budget=0.5)
    host, port = silent_server[7:].split(":")

    def cleanup_call():
        with c.scope(), cancel.cleanup():
            sock = socket.create_connection((host, int(port)))
            cancel.watch_socket(sock)
            sock.settimeout(60)
            return sock.recv(10)
    t, box = _in_thread(cleanup_call)
    time.sleep(0.2)
    c.cancel()
    time.sleep(0.2)
    assert t.is_alive()  # spared by the stop ...
    t.join(3)
    assert not t.is_alive()  # ... until the budget is spent
    assert 0.5 <= box["elapsed"] < 3


def test_closers_run_on_cancel_and_at_once_after_it():
    c = cancel.Canceller()
    calls = []
    with c.cancellable(lambda: calls.append("a")):
        c.cancel()
    assert calls == ["a"]
    with c.cancellable(lambda: calls.append("b")):
        pass
    assert calls == ["a", "b"]


def test_outside_a_scope_nothing_is_watched():
    assert cancel.current() is None and not cancel.cancelled()
    cancel.watch_socket(socket.socket())  # no scope: no-op, no error
    with cancel.cleanup():
        assert cancel.current() is None
