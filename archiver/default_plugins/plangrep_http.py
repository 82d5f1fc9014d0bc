"""HTTP plumbing of the Plangrep source: auth pinned to the API origin, error
classification, and the streaming :class:`PlangrepDownload`.

Nothing here ever formats the API key: it lives in a :class:`pydantic.SecretStr` and is
only unwrapped inside :meth:`BearerAuth.__call__`, for requests to the API's own origin.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import re
import ssl
from collections.abc import Iterator
from email.message import Message
from urllib.parse import urlsplit

import requests
import urllib3
from pydantic import SecretStr

from .. import cancel
from ..components import Download
from ..errors import AuthError, SourceError
from ..model import Artifact
from ..retry import parse_retry_after

log = logging.getLogger("archiver.plangrep")

ERROR_BODY_LIMIT = 64 * 1024  # error bodies are small JSON; never read more than this
MESSAGE_LIMIT = 300  # server-provided text quoted in our errors

# Failures of a body already under way: the connection dropped, the server went idle
# longer than the read timeout, the body ended before Content-Length.
BODY_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError,
               requests.RequestException)


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with default ports made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


class BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer <key>``, attached only to requests for the API's origin.

    A result may hold absolute artifact URLs on any host and an artifact GET may redirect
    to storage elsewhere: neither ever sees the key. (requests also strips
    ``Authorization`` on a redirect to another host or port.) The repr never shows the key.
    """

    def __init__(self, key: SecretStr, api_url: str):
        self._key = key
        self._origin = origin(api_url)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if origin(request.url or "") == self._origin:
            request.headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        else:  # pragma: no cover - the source never builds such a request
            request.headers.pop("Authorization", None)
        return request

    def __repr__(self) -> str:
        return "BearerAuth(key=**********)"

    __str__ = __repr__


class Session(requests.Session):
    """A :class:`requests.Session` that reads the environment once per origin.

    With ``trust_env`` requests re-reads ``os.environ`` on every request (proxy variables,
    ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``): measured at a third of its CPU per small artifact
    (docs/benchmarks.md, scenario 3). The settings it derives are kept per origin, so the
    environment still decides, per host as requests does, but only at the first request to
    each host of a run. Calls that pass their own proxies, verify or cert take requests'
    own path.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple, dict] = {}

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        if proxies or verify is not None or cert is not None or not self.trust_env:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        key = origin(url)
        settings = self._environment.get(key)
        if settings is None:  # a race only computes the same settings twice
            settings = self._environment[key] = super().merge_environment_settings(
                url, {}, None, None, None)
        return {**settings, "stream": requests.sessions.merge_setting(stream, self.stream)}


class Scrubber:
    """Removes the API key from any text that came from the network before we quote it."""

    def __init__(self, key: SecretStr):
        self._key = key

    def __call__(self, text: str) -> str:
        secret = self._key.get_secret_value()
        if secret:
            text = text.replace(secret, "**********")
        if len(text) > MESSAGE_LIMIT:
            text = text[:MESSAGE_LIMIT] + "..."
        return text

    def __repr__(self) -> str:
        return "Scrubber()"


def parse_error_body(body: bytes) -> tuple[str | None, str | None]:
    """(code, message) of ``{"error": {"code", "message"}}`` or top-level ``code``/``message``."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    inner = data.get("error")
    if isinstance(inner, dict):
        data = inner
    elif isinstance(inner, str) and "message" not in data:
        data = {"code": data.get("code"), "message": inner}
    code, message = data.get("code"), data.get("message")
    return (code if isinstance(code, str) else None,
            message if isinstance(message, str) else None)


def _read_error_body(resp: requests.Response) -> bytes:
    try:
        return resp.raw.read(ERROR_BODY_LIMIT, decode_content=True) or b""
    except BODY_ERRORS:
        return b""
    finally:
        resp.close()


_HINTS = {
    401: "the API key was refused (missing, invalid, revoked or expired): check source.api_key",
    403: "the API key is not allowed to do this: it needs the jobs:read and artifacts:read scopes",
    404: "not found",
    409: "not available yet (only completed jobs have a result)",
    410: "gone: the job expired and its result and artifacts are no longer accessible",
    429: "rate limited",
}


def error_from_response(resp: requests.Response, what: str, api_origin: tuple,
                        scrub: Scrubber) -> SourceError:
    """The SourceError for a non-success response (the response is consumed and closed)."""
    status = resp.status_code
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    foreign = origin(resp.url or "") != api_origin
    code, message = parse_error_body(_read_error_body(resp))
    text = f"{what} failed: HTTP {status}"
    if code:
        text += f" {scrub(code)}"
    if message:
        text += f": {scrub(message)}"
    elif not code and resp.reason:
        text += f" {scrub(str(resp.reason))}"
    if foreign:
        text += " (from the storage host the API redirected to)"
    hint = _HINTS.get(status) or ("server error" if status >= 500 else None)
    if hint and not foreign:
        text += f" [{hint}]"
    kw = {"status": status, "code": code, "retry_after": retry_after}
    if status in (401, 403) and not foreign:
        return AuthError(text, retryable=False, **kw)
    # Transient: rate limits, server errors, timeouts; and a storage host refusing an
    # expired pre-signed URL, which a fresh request to the API replaces.
    retryable = status in (408, 425, 429) or status >= 500 or (foreign and status in (401, 403))
    return SourceError(text, retryable=retryable, **kw)


def error_from_exception(exc: BaseException, what: str, scrub: Scrubber) -> SourceError:
    """The SourceError for a request that got no response (connection, timeout, TLS)."""
    cause = exc
    # requests wraps urllib3's MaxRetryError around the real reason: quote the reason
    inner = exc.args[0] if exc.args else None
    if isinstance(getattr(inner, "reason", None), BaseException):
        cause = inner.reason
    detail = scrub(f"{type(cause).__name__}: {cause}")
    if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError, ssl.SSLError)):
        return SourceError(f"{what} failed: TLS error ({detail})", retryable=False)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError, *BODY_ERRORS[:3])):
        return SourceError(f"{what} failed: connection error ({detail})", retryable=True)
    return SourceError(f"{what} failed: {detail}", retryable=False)


# The common header, ``attachment; filename="name"`` (printable ASCII, no quote or
# backslash inside): read directly. The email parser below handles every other form;
# it was 3% of the CPU of a run of small artifacts.
_PLAIN_DISPOSITION = re.compile(
    r'[A-Za-z-]+[ \t]*;[ \t]*filename[ \t]*=[ \t]*"([\x20\x21\x23-\x5b\x5d-\x7e]*)"[ \t]*')


def content_disposition_filename(value: str | None) -> str | None:
    """The filename of a Content-Disposition header (RFC 6266): ``filename*`` (RFC 5987/2231,
    any charset) preferred over ``filename``. Untrusted: record it, never use it as a path."""
    if not value:
        return None
    plain = _PLAIN_DISPOSITION.fullmatch(value)
    if plain is not None:
        return plain.group(1) or None
    msg = Message()
    try:
        msg["content-disposition"] = value
        params = msg.get_params(header="content-disposition") or []
    except Exception:  # noqa: BLE001 - a hostile header must never break a download
        return None
    plain = extended = None
    for name, val in params[1:]:
        if name.lower().rstrip("*") != "filename":
            continue
        if isinstance(val, tuple):
            try:
                extended = email.utils.collapse_rfc2231_value(val, errors="replace")
            except LookupError:  # unknown charset
                extended = val[2]
        else:
            plain = email.utils.unquote(val)
    return extended or plain or None


def _content_length(resp: requests.Response) -> int | None:
    if "chunked" in resp.headers.get("Transfer-Encoding", "").lower():
        return None
    raw = resp.headers.get("Content-Length")
    if raw is None:
        return None
    values = {v.strip() for v in raw.split(",")}
    if len(values) != 1:
        return None
    try:
        size = int(values.pop())
    except ValueError:
        return None
    return size if size >= 0 else None


class PlangrepDownload(Download):
    """One artifact body, streamed exactly as served (Content-Encoding is never decoded).

    ``size`` is the Content-Length (None for a chunked body); ``filename`` the
    Content-Disposition filename; ``content_type``/``content_encoding`` as served;
    ``received`` the byte count so far. Iterating raises ``SourceError(retryable=True)``
    naming the job and path when the connection drops or the body is shorter or longer
    than announced: never a silent short read.
    """

    def __init__(self, resp: requests.Response, artifact: Artifact, chunk_size: int):
        self._resp = resp
        self.artifact = artifact
        self._chunk_size = chunk_size
        self._started = False
        self.size = _content_length(resp)
        self.filename = content_disposition_filename(resp.headers.get("Content-Disposition"))
        self.content_type = resp.headers.get("Content-Type")
        self.content_encoding = resp.headers.get("Content-Encoding")
        self.received = 0

    def __repr__(self) -> str:
        return (f"PlangrepDownload(job={self.artifact.job_id!r}, path={self.artifact.path!r}, "
                f"size={self.size})")

    def _what(self) -> str:
        return f"job {self.artifact.job_id} artifact {self.artifact.path!r}"

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise RuntimeError(f"{self._what()}: a download can be iterated only once")
        self._started = True
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        size = self.size
        try:
            for chunk in self._resp.raw.stream(self._chunk_size, decode_content=False):
                self.received += len(chunk)
                if size is not None and self.received > size:
                    raise SourceError(
                        f"{self._what()}: body longer than its Content-Length "
                        f"({self.received} > {size} bytes)", retryable=True)
                yield chunk
        except BODY_ERRORS as exc:
            self.close()
            if cancel.cancelled():  # our own stop cut the socket: not a network problem
                raise cancel.Cancelled(f"{self._what()}: stopped after {self.received} "
                                       "bytes") from None
            raise SourceError(
                f"{self._what()}: connection failed after {self.received}"
                f"{f' of {size}' if size is not None else ''} bytes "
                f"({type(exc).__name__}: {str(exc)[:MESSAGE_LIMIT]})", retryable=True) from exc
        except SourceError:
            self.close()
            raise
        if size is not None and self.received != size:
            self.close()
            if cancel.cancelled():
                raise cancel.Cancelled(f"{self._what()}: stopped after {self.received} "
                                       "bytes")
            raise SourceError(f"{self._what()}: body ended after {self.received} of "
                              f"{size} bytes (Content-Length)", retryable=True)

    def close(self) -> None:
        self._resp.close()
