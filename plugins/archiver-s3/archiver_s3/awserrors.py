"""Turning botocore exceptions into short messages that never carry credentials.

Messages are built from the error code and message S3 returned (or the exception type
for client-side failures), never from request headers or the response body.
"""

from __future__ import annotations

from typing import Any

from archiver.errors import SinkError

#: HTTP statuses and codes meaning "no such object".
NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
PRECONDITION_FAILED = {"412", "PreconditionFailed"}
NO_SUCH_UPLOAD = {"NoSuchUpload", "404"}

_HINTS = {
    "InvalidAccessKeyId": "the AWS access key id is not known: check the credentials "
                          "(environment, profile or role)",
    "SignatureDoesNotMatch": "the request signature does not match: check the secret "
                             "access key",
    "InvalidToken": "the session token is invalid: refresh the credentials",
    "ExpiredToken": "the session token has expired: refresh the credentials",
    "AccessDenied": "access denied: the credentials lack a permission (see the IAM "
                    "policy in the archiver-s3 README)",
    "AllAccessDisabled": "all access to this bucket has been disabled",
    "NoCredentialsError": "no AWS credentials found: set AWS_ACCESS_KEY_ID/"
                          "AWS_SECRET_ACCESS_KEY, choose a 'profile', or run with a role",
    "PartialCredentialsError": "incomplete AWS credentials in the environment or profile",
    "ProfileNotFound": "the configured profile does not exist in ~/.aws/config",
    "EndpointConnectionError": "cannot connect to the S3 endpoint",
}


def is_client_error(exc: BaseException) -> bool:
    return hasattr(exc, "response") and isinstance(exc.response, dict)


def code(exc: BaseException) -> str:
    if is_client_error(exc):
        return str(exc.response.get("Error", {}).get("Code", ""))  # type: ignore[attr-defined]
    return type(exc).__name__


def status(exc: BaseException) -> int | None:
    if is_client_error(exc):
        meta: dict[str, Any] = exc.response.get("ResponseMetadata", {})  # type: ignore
        return meta.get("HTTPStatusCode")
    return None


def describe(exc: BaseException, needs: str = "") -> str:
    """``AccessDenied (HTTP 403): access denied: ...`` style summary of ``exc``; ``needs``
    (the permission the call requires) is added when S3 refused access."""
    c = code(exc)
    if is_client_error(exc):
        message = str(exc.response.get("Error", {}).get("Message", "")).strip()  # type: ignore
        head = f"HTTP {status(exc)}" if not c or c.isdigit() else f"{c} (HTTP {status(exc)})"
        text = f"{head}: {_HINTS.get(c) or message or 'no message'}"
        if needs and c in ("AccessDenied", "403"):
            text += f" (needs {needs})"
        return text
    hint = _HINTS.get(c)
    return f"{c}: {hint}" if hint else f"{c}: {exc}"


class RetryableSinkError(SinkError):
    """A failure that another attempt may not meet: the connection dropped, or S3's reply
    lacked a field it always sends (a response cut short). ``retryable`` is True; the core
    counts the copy as failed, so the job stays incomplete and the next run tries again
    (an object already committed is then found and compared, not sent again)."""

    retryable = True


def is_transport(exc: BaseException) -> bool:
    """Whether ``exc`` is botocore's word for a broken connection or a cut-off reply."""
    try:
        from botocore import exceptions as bex
    except ImportError:  # pragma: no cover - the distribution depends on botocore
        return False
    return isinstance(exc, (bex.HTTPClientError, bex.ConnectionError,
                            bex.IncompleteReadError))
