"""One GCS resumable upload session, fed chunk by chunk (JSON API protocol).

google-cloud-storage creates the session (``Blob.create_resumable_upload_session``: URL,
metadata, KMS key, ``ifGenerationMatch``); its own chunk drivers want a seekable stream,
hide the final object resource and cannot cancel the session, so the chunk PUTs are made
here, following https://cloud.google.com/storage/docs/performing-resumable-uploads:

* non-final chunks are multiples of 256 KiB sent as ``bytes a-b/*``; the ``308`` reply's
  ``Range`` says how much was persisted (possibly less than sent: the rest is resent);
* the final request carries ``bytes a-b/total`` and ``X-Goog-Hash`` so GCS verifies the
  whole object before it becomes visible;
* after a dropped connection, 408, 429 or 5xx the session's status is queried
  (``bytes */*``) and sending resumes at the persisted offset;
* ``DELETE`` on the session URL cancels it (GCS answers 499).
"""

from __future__ import annotations

import re
import time

from archiver import cancel
from archiver.errors import SinkError

from .client import redact

CONTENT_TYPE = "application/octet-stream"
#: seconds to wait before each retry of a failed request (module-level so tests can shorten).
RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
TIMEOUT = (30, 300)  # (connect, read) seconds per request
_RETRYABLE = {408, 429, 500, 502, 503, 504}
_GONE = {404, 410, 499}
_RANGE = re.compile(r"bytes=0-(\d+)$")


class ObjectExists(Exception):
    """GCS refused the upload with 412: the key already holds an object."""


class ResumableSession:
    """Drives one session URL. ``offset`` is how many bytes GCS confirmed persisting.

    ``where`` (e.g. ``sink archive: gs://bucket/key``) starts every error message; the
    session URL itself never appears in one, since it lets anyone upload to the session.
    """

    def __init__(self, http, url: str, where: str):
        self.http, self.url, self.where = http, url, where
        self.offset = 0
        self.closed = False  # finalised or cancelled

    # ------------------------------------------------------------------ sending
    def send(self, data, total: int | None = None, hashes: str | None = None) -> dict | None:
        """Send ``data`` (bytes-like, starting at ``offset``).

        Non-final (``total`` None): one request; returns None and advances ``offset`` by
        what GCS persisted, which may be less than ``len(data)``. Final: repeats until GCS
        finalises the object and returns its resource (a dict).
        """
        view = memoryview(data)
        failures = 0
        while True:
            start = self.offset
            headers = {"Content-Type": CONTENT_TYPE,
                       "Content-Range": _content_range(start, len(view), total)}
            if total is not None and hashes:
                headers["X-Goog-Hash"] = hashes
            problem = None
            try:
                resp = self.http.put(self.url, data=view, headers=headers, timeout=TIMEOUT)
            except Exception as exc:  # requests/urllib3/google-auth transport errors
                if not _is_transport_error(exc):
                    raise
                problem = f"{type(exc).__name__}: {redact(str(exc))[:200]}"
            else:
                result = self._handle(resp, total)
                if isinstance(result, dict):
                    return result
                if result is None:
                    problem = f"HTTP {resp.status_code}"
                else:
                    progressed = result - start
                    if progressed < 0 or progressed > len(view):
                        raise SinkError(f"{self.where}: upload session reported {result} bytes "
                                        f"persisted, expected {start}..{start + len(view)}")
                    self.offset, view = result, view[progressed:]
                    if progressed and total is None:
                        return None  # a non-final chunk went (maybe partly) through
                    if progressed:
                        failures = 0
                        continue  # final request: resend what GCS did not keep
                    problem = "no progress"
            failures += 1
            cancel.check()  # a stop cut the request: no retry, no backoff sleep
            if failures > len(RETRY_DELAYS):
                raise SinkError(f"{self.where}: upload failed after {failures} attempts "
                                f"({problem})")
            time.sleep(RETRY_DELAYS[failures - 1])
            state = self.status(total)
            if isinstance(state, dict):
                return state
            if state is not None:
                skip = state - self.offset
                if skip < 0 or skip > len(view):
                    raise SinkError(f"{self.where}: upload session lost data (persisted "
                                    f"{state} bytes, {self.offset} were confirmed)")
                view, self.offset = view[skip:], state

    def _handle(self, resp, total: int | None) -> dict | int | None:
        """The object resource (final), the persisted size (308), or None (retryable)."""
        code = resp.status_code
        if code in (200, 201):
            self.closed = True
            if total is None:
                raise SinkError(f"{self.where}: the upload was finalised before commit")
            try:
                return resp.json()
            except ValueError:
                raise SinkError(f"{self.where}: finalised, but the reply is not JSON") from None
        if code == 308:
            return _persisted(resp, self.where)
        if code == 412:
            self.closed = True
            raise ObjectExists()
        if code in _GONE:
            self.closed = True
            raise SinkError(f"{self.where}: the upload session no longer exists (HTTP {code}: "
                            "cancelled, discarded or expired)")
        if code in _RETRYABLE:
            return None
        raise SinkError(f"{self.where}: upload refused: HTTP {code}: "
                        f"{redact(resp.text[:300])}")

    def status(self, total: int | None) -> dict | int | None:
        """Ask GCS how much it persisted (int), or the object if it finished (dict).

        None when the status request itself failed; the caller counts that as a failure.
        """
        headers = {"Content-Range": f"bytes */{total if total is not None else '*'}"}
        try:
            resp = self.http.put(self.url, data=b"", headers=headers, timeout=TIMEOUT)
        except Exception as exc:
            if not _is_transport_error(exc):
                raise
            return None
        if resp.status_code in (200, 201) and total is None:
            self.closed = True
            raise SinkError(f"{self.where}: the upload was finalised before commit")
        return self._handle(resp, total)

    # ------------------------------------------------------------------ cancelling
    def cancel(self) -> None:
        """Cancel the session; a session that is already gone counts as cancelled."""
        if self.closed:
            return
        cancel_session(self.http, self.url, self.where)
        self.closed = True


def cancel_session(http, url: str, where: str) -> None:
    try:
        with cancel.cleanup():  # spared by a stop for a moment: it removes what we sent
            resp = http.delete(url, timeout=TIMEOUT)
    except Exception as exc:
        if not _is_transport_error(exc):
            raise
        raise SinkError(f"{where}: could not cancel the upload session "
                        f"({type(exc).__name__})") from None
    # 499 is GCS's documented reply to a successful cancel; 404/410: already gone.
    if resp.status_code not in (200, 204, *_GONE):
        raise SinkError(f"{where}: could not cancel the upload session: HTTP "
                        f"{resp.status_code}: {redact(resp.text[:300])}")


def _content_range(start: int, length: int, total: int | None) -> str:
    if length == 0:
        return f"bytes */{total if total is not None else '*'}"
    return f"bytes {start}-{start + length - 1}/{total if total is not None else '*'}"


def _persisted(resp, where: str) -> int:
    value = resp.headers.get("Range")
    if not value:
        return 0  # nothing persisted yet
    match = _RANGE.match(value.strip())
    if not match:
        raise SinkError(f"{where}: unexpected Range header {value!r} from the upload session")
    return int(match.group(1)) + 1


def _is_transport_error(exc: BaseException) -> bool:
    import requests
    from google.auth import exceptions as auth_exc

    return isinstance(exc, (requests.ConnectionError, requests.Timeout,
                            auth_exc.TransportError))

