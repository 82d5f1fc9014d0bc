"""A sink writer whose crash leftovers are always known to the ledger.

Every path that writes to a sink (the pipeline, bag tag files, replication) goes through
:class:`TrackedWriter`: the writer's ``pending`` token (temporary file, multipart upload
id, resumable session) is recorded (committed) before the first byte, updated when it
changes, and removed after commit or after an abort that succeeded, so a run killed at
any point leaves a record that the next run or ``archiver cleanup`` turns into
:meth:`Sink.discard`. A writer creates nothing before its first write (the contract of
:class:`archiver.components.Writer`), so there is no gap between "exists" and
"recorded"; an abort that fails (the sink cannot remove the leftover) keeps the record.
"""

from __future__ import annotations

import logging
import os
import socket

from .cancel import Cancelled, cancelled
from .components import Sink
from .model import StoredObject

log = logging.getLogger("archiver.tracked")

_process_owner: tuple[int, str] | None = None


def process_owner() -> str:
    """This process as the owner of pending writers that no claimed job owns (bag tag
    files, replication): ``host:pid:proc``, so that recovery on this host can tell from
    the pid whether it is alive. Recomputed after a fork."""
    global _process_owner
    pid = os.getpid()
    if _process_owner is None or _process_owner[0] != pid:
        _process_owner = (pid, f"{socket.gethostname()}:{pid}:proc")
    return _process_owner[1]


class TrackedWriter:
    """``write``/``commit``/``abort`` of one sink writer, with its pending token tracked."""

    def __init__(self, sink: Sink, ledger, key: str, *, job_id: str | None, path: str | None,
                 metadata: dict[str, str] | None = None, owner: str | None = None):
        self.sink, self.ledger, self.key = sink, ledger, key
        self.job_id, self.path, self.owner = job_id, path, owner or process_owner()
        self.writer = sink.open_writer(key, metadata)
        self.written = 0
        self._pending_id: int | None = None
        self._token: str | None = None
        self._track()

    def _track(self) -> None:
        token = self.writer.pending
        if token == self._token:
            return
        if self._pending_id is None:
            # owner: recovery discards this token only once its owner is dead
            self._pending_id = self.ledger.add_pending(self.sink.label, token, self.job_id,
                                                       self.path, owner=self.owner)
        else:
            self.ledger.update_pending(self._pending_id, token)
        self._token = token

    def _forget(self) -> None:
        if self._pending_id is not None:
            self.ledger.remove_pending(self._pending_id)
            self._pending_id = None

    def write(self, chunk: bytes) -> None:
        self.writer.write(chunk)
        self.written += len(chunk)
        self._track()

    def commit(self, digests: dict[str, str], *, forget: bool = True) -> StoredObject:
        """Commit; on failure the caller aborts (the pending record stays until then).
        ``forget=False`` leaves the pending record to the caller's :meth:`forget`, so it
        can leave the ledger in the same transaction as the copy's row."""
        stored = self.writer.commit(digests)
        if forget:
            self._forget()
        return stored

    def forget(self) -> None:
        """Drop the pending record of a committed writer."""
        self._forget()

    def abort(self) -> None:
        """Best effort: if the sink's abort fails, the pending record lets cleanup retry."""
        try:
            self.writer.abort()
        except Exception as exc:
            if isinstance(exc, Cancelled) or cancelled():  # a stop cut the cleanup short
                log.warning("sink %s: abort of %s cut short by the stop; the pending "
                            "record lets the next start finish it", self.sink.label, self.key)
                return
            log.exception("sink %s: abort of %s failed", self.sink.label, self.key)
            return
        self._forget()
