"""The contracts between the core and its plugins: sources, transforms and sinks.

Bytes never cross a pluggy hook: plugins register *component classes* through the
``archiver_register_*`` hooks, and the core wires plain objects built from them.

Every component class carries ``name`` (its YAML ``type``) and ``Config``, a pydantic
model validated from the YAML mapping (``type``/``name`` keys removed). Unknown keys are
refused, so ``Config`` should subclass :class:`ComponentConfig`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator

from pydantic import BaseModel, ConfigDict

from .model import Artifact, Job, StoredObject


def no_repeats(values: list) -> list:
    """Validator for list options: an entry given twice is a mistake worth naming."""
    twice = [v for i, v in enumerate(values) if v in values[:i]]
    if twice:
        raise ValueError(f"{twice[0]!r} is listed twice")
    return values


class ComponentConfig(BaseModel):
    """Base of every component's typed configuration: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component:
    name: ClassVar[str] = ""
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig

    def __init__(self, config: ComponentConfig):
        self.config = config

    def close(self) -> None:
        """Release pooled connections; called once when the pipeline ends."""


# --------------------------------------------------------------------------- sources

class Download(AbstractContextManager):
    """An open artifact body: a single-pass iterator of raw bytes (exactly as served).

    ``filename`` is the Content-Disposition filename if any (untrusted: it is recorded,
    never used as a path); ``size`` the announced Content-Length or ``None``.
    Iterating raises :class:`archiver.errors.SourceError` (``retryable=True``) on a
    dropped connection or a body shorter or longer than announced.
    """

    filename: str | None = None
    size: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __exit__(self, *exc) -> None:
        self.close()


class Source(Component):
    """Finds jobs and their artifacts and opens artifacts as streams."""

    def iter_jobs(self) -> Iterator[Job]:
        """Every job of the configured projects (any status), each once."""
        raise NotImplementedError

    def get_job(self, job_id: str) -> Job:
        raise NotImplementedError

    def read_result(self, job: Job) -> bytes:
        """The job's result JSON as raw bytes (stored byte-exact)."""
        raise NotImplementedError

    def find_artifacts(self, job: Job, result: bytes) -> list[Artifact]:
        """Artifacts referenced anywhere in ``result``, deduplicated by path."""
        raise NotImplementedError

    def open(self, artifact: Artifact) -> Download:
        raise NotImplementedError

    def preflight(self) -> str | None:
        """One cheap authenticated request, for ``archiver config check --online``: raise
        :class:`archiver.errors.AuthError` for refused credentials and
        :class:`archiver.errors.SourceError` saying what else is wrong (unreachable host,
        an address that is not the API); return a short description of what was found.
        The default checks nothing."""
        return None

    def use_budget(self, budget: Any) -> None:
        """Optional: the fleet API budget (``rate_limit:``, :class:`archiver.budget.FleetBudget`),
        handed over by the runtime right after the source is built, when it is configured.
        A source calling a rate-limited API calls ``budget.acquire()`` before every request
        (False: the run is stopping, send nothing) and ``budget.pause(seconds)`` when the
        API answers 429 with ``Retry-After``, so every worker of the fleet honours one
        rate and one pause. The default ignores it (a source whose requests cost nothing)."""


# --------------------------------------------------------------------------- transforms

class Stage:
    """Per-artifact instance of a transform.

    ``feed`` may be called any number of times (also with empty chunks), then ``finish``
    exactly once; ``facts`` after ``finish``. The concatenated output must not depend
    on how the input was chunked (``archiver.testing.transform_contract`` checks this).
    Raise :class:`archiver.errors.TransformError` to refuse the input.
    """

    def feed(self, chunk: bytes) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        return b""

    def iter_feed(self, chunk: bytes) -> Iterator[bytes]:
        """Like ``feed``, but yields the output in pieces; the core always calls this one.

        Override it (and ``iter_finish``) when one input chunk can expand a lot
        (decompression): each piece goes down the chain and into the writers before the
        next is made, so memory stays bounded whatever the expansion ratio.
        """
        yield self.feed(chunk)

    def iter_finish(self) -> Iterator[bytes]:
        yield self.finish()

    def facts(self) -> dict[str, Any]:
        """Facts learnt from the bytes, e.g. ``{"digests": {"sha256": "..."}}``."""
        return {}


@dataclass
class ArtifactContext:
    """What a stage may know about the object it transforms."""

    job: Job
    artifact: Artifact | None
    key: str
    sink: str | None = None  # None for the pipeline-level (common) chain
    extra: dict[str, Any] = field(default_factory=dict)


class Transform(Component):
    """Builds one :class:`Stage` per artifact and chain.

    ``changes_bytes`` tells the core whether output may differ from input; a chain of
    transforms that never change bytes lets the core reuse one digest for "received"
    and "stored".
    """

    changes_bytes: ClassVar[bool] = True

    def stage(self, ctx: ArtifactContext) -> Stage:
        raise NotImplementedError

    def rename(self, key: str) -> str:
        """The stored key for an input key (e.g. decompress drops ``.gz``)."""
        return key

    def digest_algorithms(self) -> tuple[str, ...]:
        """Algorithms whose digests this transform's stages report in
        ``facts()["digests"]``. The core uses them instead of computing the same digest
        twice; only meaningful for transforms with ``changes_bytes = False``."""
        return ()


# --------------------------------------------------------------------------- sinks

class Writer:
    """Push-style writer of one object with unknown total length.

    Memory is bounded and declared by the sink (see ``Sink.memory_bound``). Nothing is
    visible at the key before ``commit``; ``abort`` leaves nothing behind and may be
    called after a failed ``write`` or ``commit``, and more than once.
    ``pending`` is an opaque token (temporary path, upload id) that the core records in
    the ledger while the writer is open so that a crash can be cleaned up later by
    :meth:`Sink.discard`. The core records it as soon as ``open_writer`` returns and
    again whenever it changes after a ``write``; so create nothing at the sink before the
    first ``write``/``commit`` unless ``pending`` names it already (the local sink
    creates its temporary file then). ``abort`` raises while what ``pending`` names
    cannot be removed: the core then keeps the record for ``discard``. A writer whose
    crash leaves nothing behind (the local sink's unnamed temporary files) keeps
    ``pending`` None, and nothing is recorded.
    """

    pending: str | None = None

    def write(self, chunk: bytes) -> None:
        raise NotImplementedError

    def commit(self, digests: dict[str, str]) -> StoredObject:
        """Make the object visible at its key.

        ``digests`` are the digests of the bytes written (at least ``sha256``). If the key
        already holds an object with the same sha256 this is success with
        ``existed=True``; with different bytes raise :class:`archiver.errors.ConflictError`
        and leave the stored object untouched.
        """
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class Sink(Component):
    """Stores objects under keys. ``label`` is the sink's configured ``name``.

    ``host_local``: the writers' pending tokens name something only the host that wrote
    them can reach (a temporary file path), so crash recovery discards them only on that
    host; tokens of other sinks (upload ids, session URLs) are discarded from any host.
    """

    host_local: bool = False
    commit_buffers: ClassVar[bool] = True
    """Does a writer still hold memory while it commits (its last part, a whole small
    object)? True (the safe default): the object keeps its download slot until it is
    committed, so ``concurrency`` bounds the writers holding memory. False (local: at
    commit every byte is in a file): the slot goes to the next download while this object
    is made durable and linked into place."""

    def __init__(self, config: ComponentConfig, label: str = ""):
        super().__init__(config)
        self.label = label or self.name

    def open_writer(self, key: str, metadata: dict[str, str] | None = None) -> Writer:
        raise NotImplementedError

    def stat(self, key: str) -> StoredObject | None:
        """The object at ``key`` with the digests recorded when it was stored, or None."""
        raise NotImplementedError

    def open_read(self, key: str) -> AbstractContextManager[Iterable[bytes]]:
        """Stream an object's stored bytes back (fixity checks, replication)."""
        raise NotImplementedError

    def discard(self, pending: str) -> None:
        """Remove what a crashed writer left behind (its ``pending`` token).

        Called only once the writer's owner is dead (:mod:`archiver.recovery`), or by
        ``archiver cleanup --force``; the writer may still be open only if that process
        was wrongly declared dead, which the lease rules make a matter of minutes."""

    def preflight(self) -> None:
        """Online checks before any download (bucket exists, writable, ...).

        Raise :class:`archiver.errors.SinkError` naming the sink; called by
        ``archiver config check --online`` and at the start of every run.
        """

    def cleanup(self, older_than: float) -> list[str]:
        """Remove leftovers of crashed writers older than ``older_than`` seconds found by
        listing the store itself (stray temporary files, open multipart uploads under the
        prefix); return a description of each removed item. Used by ``archiver cleanup``.
        """
        return []

    def list_keys(self, prefix: str) -> Iterable[str] | None:
        """Committed keys below ``prefix`` (as given to ``open_writer``), or None when the
        sink cannot list (fixity audits then compare manifests with the ledger only)."""
        return None

    def retention(self, key: str) -> dict[str, Any] | None:
        """The retention an object written at ``key`` now would receive, without I/O
        (shown by ``archiver run --dry-run``); None when the sink applies none."""
        return None

    def retention_in_force(self, key: str) -> dict[str, Any] | None:
        """The retention the store holds for the object at ``key`` right now, read back
        from the provider (``archiver verify`` checks it is still in force and no shorter
        than recorded or configured).

        Same shape as :meth:`retention`: ``mode`` and ``retain_until`` (ISO 8601) when a
        retention is set, and each hold that is on (``legal_hold``, ``temporary_hold``,
        ``event_based_hold``) as True; ``{}`` when the object has none. None (this
        default) means the sink cannot tell, and verify notes retention as unchecked.
        Raise :class:`archiver.errors.SinkError` when it cannot be read."""
        return None

    def open_repair_writer(self, key: str, metadata: dict[str, str] | None = None) -> Writer:
        """Optional, used only by ``archiver repair``: a writer whose commit may replace
        the damaged object at ``key`` without destroying it.

        Same contract as :meth:`open_writer` (nothing visible before commit, ``abort``,
        ``pending``), except that commit, finding other bytes at the key, keeps them
        (moved aside, or as an older version of the object) and puts the new bytes at
        the key; ``StoredObject.extra["replaced"]`` then says where the old bytes are
        kept. If the key holds the same bytes already, commit succeeds with
        ``existed=True``. A sink that cannot keep the old bytes (a bucket without
        versioning, an object the provider refuses to replace) raises
        :class:`archiver.errors.SinkError` saying what an operator must do.

        Sinks without this capability keep this default: repair then names the sink as
        unable to repair in place (a *missing* object is still written again through
        :meth:`open_writer`)."""
        raise NotImplementedError(f"sink {self.label!r} (type {self.name}) cannot repair in "
                                  "place: it cannot replace an object while keeping the "
                                  "damaged one")

    def describe(self, key: str) -> str:
        """Human-readable location of a key, e.g. ``s3://bucket/key``."""
        return key

    memory_bound: ClassVar[str] = "one chunk"
