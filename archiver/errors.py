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


class LedgerError(ArchiverError):
    """The ledger cannot be opened or used as asked; the message says where and why."""


class LedgerSchemaError(LedgerError):
    """The ledger's schema is not one this archiver may use: newer than it knows, or an
    applied migration differs from this archiver's copy of it. Nothing was written."""


class LedgerMissing(LedgerError):
    """There is no ledger where one must already exist (``open_ledger(create=False)``)."""

    def __init__(self, path):
        super().__init__(f"no ledger at {path}: wrong directory or state_dir?")
        self.path = path


class LeaseLost(LedgerError):
    """A fenced write found the job's lease held by another worker (or by none): the
    transaction was rolled back and nothing of it was written."""

    def __init__(self, job_id: str, holder: str | None):
        super().__init__(f"job {job_id}: lease lost to {holder or 'no worker (released)'}")
        self.job_id, self.holder = job_id, holder
