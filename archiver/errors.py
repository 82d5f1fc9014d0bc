"""Exception hierarchy. Every message names the job, artifact, sink or YAML path at fault."""

from __future__ import annotations


class ArchiverError(Exception):
    """Base class of every error archiver raises on purpose."""


class ConfigError(ArchiverError):
    """The YAML file or a plugin configuration is invalid (raised before any I/O)."""


class PluginError(ArchiverError):
    """A plugin is missing, broken or collides with another one."""


class SourceError(ArchiverError):
    """The source could not deliver a job, result or artifact.

    ``retryable`` tells the pipeline whether restarting the whole artifact may help
    (a dropped connection mid-body, a short body) or not (401, 403, 404, 410).
    """

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None,
                 code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.code = code
        self.retry_after = retry_after


class AuthError(SourceError):
    """The API key was refused (401/403): nothing else will work, stop early."""


class SinkError(ArchiverError):
    """A sink failed to store or read an object."""


class ConflictError(SinkError):
    """The key already holds different bytes; the stored object was left untouched."""


class TransformError(ArchiverError):
    """A transform refused its input (corrupt data, bomb guard, plugin bug)."""
