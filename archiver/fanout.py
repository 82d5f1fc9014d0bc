"""Fan-out: store one object (an artifact, job.json or result.json) in every sink that
lacks it, from one download.

The download feeds the common chain; its output is split into each sink's chain and
writer. A sink whose chain or writer fails is aborted alone; the others go on. A dropped
download aborts every writer and restarts the object from the first byte (the API
promises no ranges). Nothing is visible at a key before its writer commits.

Inputs are narrow (:class:`StoreContext`): the source, the sinks, the transforms, the
ledger and the stop conditions; this module builds the chains itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator

from . import cancel
from .chain import build_chains, chain_facts, stored_digests
from .components import ArtifactContext, Sink, Source, Transform
from .errors import ArchiverError, ConflictError, SourceError, TransformError
from .model import Artifact, ArtifactResult, Job, StoredObject
from .progress import INTERVAL
from .retry import RetryPolicy
from .tracked import TrackedWriter

log = logging.getLogger("archiver.fanout")


class Interrupted(ArchiverError):
    """A stop was requested (SIGINT/SIGTERM): in-flight writers are aborted."""


@dataclass
class Item:
    kind: str                    # "job" | "result" | "artifact"
    path: str                    # ledger identity: artifact path or "job.json"/"result.json"
    artifact: Artifact | None
    data: bytes | None           # in-memory bytes for job.json / result.json
    keys: dict[str, str]         # sink name -> key


def _never() -> bool:
    return False


@dataclass
class StoreContext:
    """What storing one object needs, and nothing else."""

    source: Source
    sinks: dict[str, Sink]
    common: list[Transform]
    per_sink: dict[str, list[Transform]]
    ledger: Any                              # archiver.ledger.RunLedger
    policy: RetryPolicy
    stopped: Callable[[], bool] = _never     # abort in-flight writers now
    draining: Callable[[], bool] = _never    # start nothing new
    owner: str | None = None                 # worker id, recorded with pending tokens
    wait: Callable[[float], bool] = field(default=lambda s: False)  # sleep; True if stopped
    # Bytes of a download in flight: on_bytes(job_id, path, done, total), at most once per
    # progress.INTERVAL per object and never for one done sooner. None: not even the clock
    # is read (no progress display, workers whose parent shows none).
    on_bytes: Callable[[str, str, int, int | None], None] | None = None
    # The runtime's archiver.cancel.Canceller: a stop cuts the sockets of the download and
    # the uploads in flight, instead of waiting for a chunk boundary that may never come.
    canceller: Any = None
    # Downloads in flight (``concurrency``): acquired before the request, released when
    # the body has been read, or after the commit when a sink buffers through it
    # (Sink.commit_buffers). None: no bound beyond the caller's threads.
    downloads: Any = None
    # The job's archiver.jobrecords.JobRecords: an object's ledger records join the job's
    # next group commit. None: they are committed before store_item returns.
    records: Any = None

    def scope(self):
        return self.canceller.scope() if self.canceller is not None else nullcontext()

    def chains(self, job: Job, artifact: Artifact | None, key: str):
        ctx = ArtifactContext(job, artifact, key)
        if artifact is None:  # job.json / result.json are stored byte-exact, untransformed
            return build_chains([], {n: [] for n in self.sinks}, ctx)
        return build_chains(self.common, {n: self.per_sink.get(n, []) for n in self.sinks},
                            ctx)


class _Out:
    """One sink's chain and tracked writer for the current attempt."""

    def __init__(self, sink_name: str, chain, writer: TrackedWriter):
        self.sink, self.chain, self.writer = sink_name, chain, writer
        self.facts: list[dict] = []  # the chain's digest facts, once committed


def _what(job: Job, item: Item) -> str:
    return f"job {job.id} {item.kind} {item.path!r}"


def _about(job: Job, item: Item, exc: Exception) -> str:
    """``job J artifact 'p': problem``, once: source errors already name the object."""
    what, text = _what(job, item), str(exc)
    return text if text.startswith(what) else f"{what}: {text}"


def store_item(p: StoreContext, job: Job, item: Item, done: dict) -> ArtifactResult:
    res = ArtifactResult(job.id, item.path, item.kind)
    needed = [s for s in p.sinks if (item.path, s) not in done]
    if not needed:
        res.skipped = True
        return res
    # The first attempt's download slot, taken before the drain check: a stop that came
    # while this object waited for a slot starts nothing new.
    slot = _Slot(p.downloads if item.data is None else None)
    if p.draining():
        slot.release()
        res.errors["*"] = f"{_what(job, item)}: not started, shutting down"
        return res
    committed: list[tuple[_Out, StoredObject]] = []
    attempt = 0
    while True:
        attempt += 1
        try:
            with p.scope():
                _attempt(p, job, item, needed, res, committed, slot)
            break
        except SourceError as exc:
            if exc.retryable and attempt <= p.policy.retries and not p.stopped():
                delay = p.policy.sleep_for(attempt, exc.retry_after)
                log.warning("%s; restarting in %.1fs (attempt %d)", _about(job, item, exc),
                            delay, attempt + 1)
                p.ledger.event("retry", str(exc), job_id=job.id, path=item.path)
                if p.wait(delay):
                    res.errors["*"] = f"{_what(job, item)}: interrupted"
                    break
                continue
            res.errors["*"] = _about(job, item, exc)
            break
        except (Interrupted, cancel.Cancelled):
            res.errors["*"] = f"{_what(job, item)}: interrupted, nothing partial kept"
            break
        except TransformError as exc:
            res.errors["*"] = _about(job, item, exc)
            break
    if p.stopped() and res.errors:
        # Errors after a stop are what the stop did (sockets cut, writers aborted): one
        # "stopped" line, not a sink failure; the job stays incomplete and is resumed.
        res.errors = {"*": f"{_what(job, item)}: stopped, nothing partial kept"}
    if not committed and p.stopped():
        # Aborted by a stop or a lost lease: nothing of this object failed, and a worker
        # that lost its lease must not overwrite what the job's new owner records.
        return res

    def record() -> None:  # everything this object adds to the ledger, committed together
        for out, stored in committed:
            out.writer.forget()
            p.ledger.record_copy(job.id, item.path, stored, received=res.received,
                                 chain=out.facts, verified=True)
            p.ledger.event("stored", stored.location or stored.key, job_id=job.id,
                           path=item.path, sink=out.sink)
        for where, msg in res.errors.items():
            p.ledger.event("failed", msg, job_id=job.id, path=item.path,
                           sink=None if where == "*" else where)
        state = "stored" if not res.errors else "failed"
        p.ledger.record_artifact(job.id, item.path, kind=item.kind,
                                 key=item.keys[needed[0]] if needed else None,
                                 filename=res.filename, size=res.size, received=res.received,
                                 state=state, error="; ".join(res.errors.values()) or None)

    if p.records is not None:
        p.records.add(record)
    else:
        with p.ledger.batch():
            record()
    return res


def _chunks(p: StoreContext, item: Item) -> tuple[Iterator[bytes], object]:
    if item.data is not None:
        return iter((item.data,)), None
    dl = p.source.open(item.artifact)
    return iter(dl), dl


def _attempt(p: StoreContext, job: Job, item: Item, needed: list[str], res: ArtifactResult,
             committed: list, slot: _Slot) -> None:
    """One attempt at the object; ``slot`` is its download slot (taken before any
    writer opens, so writers waiting for a download hold nothing), released here; a
    released one is taken again (a restart)."""
    outs: dict[str, _Out] = {}
    res.errors = {k: v for k, v in res.errors.items() if k != "*"}
    slot.take()
    try:
        head, own = p.chains(job, item.artifact, item.keys[needed[0]])
        for name in needed:
            if name in res.errors:
                continue  # failed in an earlier attempt for a reason a restart won't fix
            try:
                w = TrackedWriter(p.sinks[name], p.ledger, item.keys[name], job_id=job.id,
                                  path=item.path, metadata={"job-id": job.id}, owner=p.owner)
            except ArchiverError as exc:
                res.errors[name] = f"{_what(job, item)} sink {name}: {exc}"
                continue
            outs[name] = _Out(name, own[name], w)
        _transfer(p, job, item, outs, head, res, slot)
        for name, out in list(outs.items()):
            stored = _commit(p, job, item, out, head, res)
            if stored is not None:
                committed.append((out, stored))
            del outs[name]
    finally:
        for out in outs.values():
            _abort(out)
        slot.release()


class _Slot:
    """An object's download slot of ``StoreContext.downloads`` (None: no bound), taken
    when made; :meth:`release` gives it back once, :meth:`take` takes it again."""

    def __init__(self, slots) -> None:
        self.slots, self.held = slots, False
        self.take()

    def take(self) -> None:
        if self.slots is not None and not self.held:
            self.slots.acquire()
            self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.release()


def _transfer(p: StoreContext, job: Job, item: Item, outs: dict[str, _Out], head,
              res: ArtifactResult, slot: _Slot) -> None:
    """Download ``item`` through the chains into the writers (not committed yet). Frees
    the download slot at the end when no writer holds memory through its commit: the
    next object's request starts while this one is made durable."""
    chunks, dl = _chunks(p, item)
    track = p.on_bytes if dl is not None else None
    try:
        if dl is not None:
            res.filename = getattr(dl, "filename", None)
        size = 0
        if track is not None:
            total, next_at = getattr(dl, "size", None), time.monotonic() + INTERVAL
        for chunk in chunks:
            if p.stopped():
                raise Interrupted("stop requested")
            size += len(chunk)
            if track is not None:
                now = time.monotonic()
                if now >= next_at:
                    next_at = now + INTERVAL
                    track(job.id, item.path, size, total)
            for data in head.feed(chunk):
                _fan_out(p, job, item, outs, data, res)
        for data in head.finish():
            _fan_out(p, job, item, outs, data, res)
        _fan_out(p, job, item, outs, None, res)
    finally:
        if dl is not None:
            dl.close()
    res.size = size
    res.received = head.digests("received")
    if not any(p.sinks[name].commit_buffers for name in outs):
        slot.release()


def _abort(out: _Out) -> None:
    """Abort one writer. Its network cleanup (abort the multipart upload, cancel the
    session) survives a stop for a moment (archiver.cancel.cleanup); what it could not
    remove stays a pending writer in the ledger."""
    with cancel.cleanup():
        out.writer.abort()


def _fan_out(p: StoreContext, job: Job, item: Item, outs: dict[str, _Out], data: bytes | None,
             res: ArtifactResult) -> None:
    """Feed ``data`` (None: finish) to every live sink; a failing sink is dropped alone."""
    for name, out in list(outs.items()):
        try:
            for piece in out.chain.feed(data) if data is not None else out.chain.finish():
                out.writer.write(piece)
        except (ArchiverError, OSError) as exc:
            res.errors[name] = f"{_what(job, item)} sink {name}: {exc}"
            _abort(out)
            del outs[name]


def _commit(p: StoreContext, job: Job, item: Item, out: _Out, head,
            res: ArtifactResult) -> StoredObject | None:
    """Commit and verify one sink's copy; the caller records it in the ledger (its pending
    record goes in the same transaction as the copy row)."""
    digests = stored_digests(head, out.chain)
    try:
        stored = out.writer.commit(digests, forget=False)
    except ConflictError as exc:
        res.errors[out.sink] = f"{_what(job, item)} sink {out.sink}: conflict: {exc}"
        p.ledger.event("conflict", str(exc), job_id=job.id, path=item.path, sink=out.sink)
        _abort(out)
        return None
    except (ArchiverError, OSError) as exc:
        res.errors[out.sink] = f"{_what(job, item)} sink {out.sink}: commit failed: {exc}"
        _abort(out)
        return None
    verified = stored.size == out.writer.written and (
        not stored.digests.get("sha256") or stored.digests["sha256"] == digests["sha256"])
    if not verified:
        out.writer.forget()
        res.errors[out.sink] = (f"{_what(job, item)} sink {out.sink}: verification failed: "
                                f"stored {stored.size} bytes, wrote {out.writer.written}")
        return None
    res.copies[out.sink] = stored
    out.facts = chain_facts(head, out.chain)
    return stored
