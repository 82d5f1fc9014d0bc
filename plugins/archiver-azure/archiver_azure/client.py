"""The Azure SDK seen through one door: lazy imports, the container client, error words.

azure-storage-blob (and azure-identity, only for ``DefaultAzureCredential``) is imported
on the first request, never when the plugin is registered: ``archiver --help`` stays
fast. Error messages are built from the HTTP status, the service's error code and the
first line of its message, then scrubbed of every configured secret and of any SAS
signature, so no credential reaches a log line, an exception or the ledger.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from archiver import cancel
from archiver.errors import SinkError

if TYPE_CHECKING:
    from .config import AzureSinkConfig

INSTALL_HINT = "pip install -e plugins/archiver-azure (azure-storage-blob)"
_SIG = re.compile(r"(?i)(sig|signature|accountkey|sharedaccesssignature)=[^&;\s'\"]+")

#: What a refused request most likely means, by the service's error code.
HINTS = {
    "AuthenticationFailed": "the credentials were refused: check the account key, "
                            "connection string or SAS (expired? wrong account?)",
    "AuthorizationFailure": "the credentials were refused: check the account key, "
                            "connection string or SAS (expired? wrong account?)",
    "AuthorizationPermissionMismatch": "the credentials lack a permission",
    "AuthorizationResourceTypeMismatch": "the SAS does not cover this resource type",
    "ContainerNotFound": "the container does not exist",
    "BlobImmutableDueToPolicy": "the blob is under an immutability policy",
    "ImmutabilityPolicyNotSupported": "immutability is not enabled on this container "
                                      "(version-level immutability support)",
}


class RetryableSinkError(SinkError):
    """A failure another attempt may not meet (connection refused or dropped, 5xx): the
    copy counts as failed now; the next run tries again and finds whatever was stored."""

    retryable = True


def sdk():
    """The azure-storage-blob module (imported on first use, with an install hint)."""
    try:
        import azure.storage.blob as blob
    except ImportError as exc:  # pragma: no cover - the distribution depends on it
        raise SinkError(f"azure-storage-blob is not installed: {INSTALL_HINT}") from exc
    return blob


def errors():
    from azure.core import exceptions
    return exceptions


class Secrets:
    """The configured secrets, to scrub from any text before it leaves the plugin."""

    def __init__(self, config: "AzureSinkConfig"):
        values = [s.get_secret_value() for s in (config.connection_string,
                                                 config.account_key, config.sas_token) if s]
        parts = []
        for value in values:
            parts.append(value)
            parts += [p.split("=", 1)[1] for p in value.split(";") if "=" in p
                      and p.split("=", 1)[0].lower() in ("accountkey", "sharedaccesssignature")]
            parts.append(value.lstrip("?"))
        self._values = sorted({p for p in parts if len(p) >= 8}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, "[secret]")
        return _SIG.sub(lambda m: f"{m.group(1)}=[secret]", text)


def status_of(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def code_of(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def is_transport(exc: BaseException) -> bool:
    """Connection refused, reset or timed out (no answer from the service at all)."""
    e = errors()
    return isinstance(exc, (e.ServiceRequestError, e.ServiceResponseError)) or (
        isinstance(exc, e.HttpResponseError) and (status_of(exc) or 0) >= 500)


def describe(exc: BaseException, secrets: Secrets, needs: str = "") -> str:
    """``AuthorizationPermissionMismatch (HTTP 403): the credentials lack a permission
    (needs ...)`` style summary; never the request, its headers or URL query."""
    status, code = status_of(exc), code_of(exc)
    if status is None:
        text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return secrets.scrub(text[:300])
    first = str(getattr(exc, "message", "") or getattr(exc, "reason", "") or "").splitlines()
    head = f"{code} (HTTP {status})" if code else f"HTTP {status}"
    text = f"{head}: {HINTS.get(code) or (first[0] if first else '') or 'no message'}"
    if needs and status == 403:
        text += f" (needs {needs})"
    return secrets.scrub(text[:400])


class _RedactSignatures(logging.Filter):
    """urllib3 logs every request line at DEBUG, SAS query (``sig=``) included: scrub it
    (the SDK's own HTTP logging redacts query values already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if _SIG.search(text):
            record.msg, record.args = _SIG.sub(lambda m: f"{m.group(1)}=[secret]", text), ()
        return True


def redact_transport_logs() -> None:
    """Install the filter once on the loggers that print request URLs."""
    for name in ("urllib3.connectionpool", "requests.packages.urllib3.connectionpool"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactSignatures) for f in logger.filters):
            logger.addFilter(_RedactSignatures())


def container_client(config: "AzureSinkConfig"):
    """A ContainerClient for the configured container, authenticated as configured.

    Requests go through a ``requests`` session whose sockets a stop can cut
    (:func:`archiver.cancel.mount_cancellable`), with the configured retries/timeouts.
    """
    blob = sdk()
    redact_transport_logs()
    import requests
    from azure.core.pipeline.transport import RequestsTransport

    session = requests.Session()
    cancel.mount_cancellable(session)
    options: dict[str, Any] = {
        "transport": RequestsTransport(session=session, session_owner=True,
                                       connection_timeout=config.timeout,
                                       read_timeout=config.timeout),
        "retry_total": config.retries, "retry_connect": config.retries,
        "retry_read": config.retries, "retry_status": config.retries,
        "retry_backoff_factor": 0.5, "retry_backoff_max": 10,
        "max_single_put_size": config.block_size, "max_block_size": config.block_size,
    }
    name = config.container
    if config.connection_string is not None:
        return blob.ContainerClient.from_connection_string(
            config.connection_string.get_secret_value(), name, **options)
    if config.account_key is not None:
        credential: Any = {"account_name": config.account_name,
                           "account_key": config.account_key.get_secret_value()}
    elif config.sas_token is not None:
        credential = config.sas_token.get_secret_value().lstrip("?")
    else:
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError as exc:
            raise SinkError("no connection_string, account_key or sas_token is configured, "
                            "so DefaultAzureCredential is used, but azure-identity is not "
                            "installed: pip install azure-identity") from exc
        credential = DefaultAzureCredential()
    return blob.ContainerClient(config.account_url, name, credential=credential, **options)
