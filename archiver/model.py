"""Plain data objects passed between source, pipeline, sinks and hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL_STATUSES = frozenset({"completed", "completed_with_errors", "failed", "cancelled", "expired"})
RESULT_STATUSES = frozenset({"completed", "completed_with_errors"})


@dataclass(frozen=True)
class Job:
    """A Plangrep job as read from the API. ``raw`` is the job object itself."""

    id: str
    project_id: str
    status: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def expires_at(self) -> str | None:
        return self.raw.get("expiresAt")

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def has_result(self) -> bool:
        return self.status in RESULT_STATUSES


@dataclass(frozen=True)
class Artifact:
    """One artifact referenced by a job's result.

    ``path`` is the ``path`` query value of the artifact URL, percent-decoded once by the
    URL parser; it is opaque and never built by hand. ``scope``/``scope_id`` say which
    artifact route serves it (``("jobs", job_id)`` or ``("projects", project_id)``).
    ``raw`` is the artifact object exactly as it appeared in the result.
    """

    job_id: str
    path: str
    url: str
    scope: str = "jobs"
    scope_id: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass
class StoredObject:
    """What a sink reports after committing (or finding) an object."""

    sink: str
    key: str
    size: int
    digests: dict[str, str] = field(default_factory=dict)
    provider_checksum: dict[str, str] = field(default_factory=dict)
    location: str = ""
    existed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ArtifactResult:
    """Outcome of one artifact (or of job.json / result.json) across all sinks.

    ``received`` holds the digests of the bytes as served by the API; ``copies`` maps sink
    name to the stored object; ``errors`` maps sink name (or ``"*"`` for the download) to
    the error message.
    """

    job_id: str
    path: str
    kind: str = "artifact"  # "artifact" | "job" | "result"
    size: int = 0
    received: dict[str, str] = field(default_factory=dict)
    copies: dict[str, StoredObject] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors
