"""Artifact GETs sent straight through the session's urllib3 pool.

requests spends more CPU on each request than the urllib3 pool beneath it (merging
session settings, hooks and cookies, parsing the URL three times): with small artifacts
that was the largest part of archiver's per-object cost (docs/benchmarks.md, scenario 3).
Artifact GETs are the only high-volume requests, so they skip that layer when doing so
changes nothing:

* the pool is the one the session's own adapter would pick for the API host, with the
  TLS settings requests derives from the session and the environment
  (``REQUESTS_CA_BUNDLE``, ``verify``, ``cert``); when a proxy applies to the API host,
  every request goes through requests instead;
* the request carries the session's headers plus ``Authorization``, built per request
  from the :class:`~pydantic.SecretStr` (the unwrapped key is never stored here);
* a redirect is handed to the session (``get`` of the ``Location``), so requests and
  :class:`~archiver.default_plugins.plangrep_http.BearerAuth` decide which hosts see the
  key, as for every other request.
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from pydantic import SecretStr
from requests.structures import CaseInsensitiveDict
from requests.utils import select_proxy


class DirectGetter:
    """``get(url)`` for URLs on the API's origin; None when requests must be used."""

    def __init__(self, session: requests.Session, api_url: str, key: SecretStr,
                 timeout: tuple[float, float]):
        self._session, self._key = session, key
        self._timeout = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        settings = session.merge_environment_settings(api_url, {}, None, None, None)
        self.enabled = not select_proxy(api_url, settings["proxies"])
        adapter = session.get_adapter(api_url)
        probe = requests.Request("GET", api_url).prepare()
        self._host, self._pool_kwargs = adapter.build_connection_pool_key_attributes(
            probe, settings["verify"], settings["cert"])
        self._poolmanager = adapter.poolmanager
        self._headers = dict(session.headers)

    def __repr__(self) -> str:
        return f"DirectGetter(enabled={self.enabled})"

    def get(self, url: str) -> requests.Response:
        """The response to ``GET url`` with its body unread (redirects followed by the
        session). urllib3 errors propagate as raised (the caller classifies them)."""
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {**self._headers, "Authorization": f"Bearer {self._key.get_secret_value()}"}
        # The pool manager may drop a pool it no longer tracks: ask it every time.
        pool = self._poolmanager.connection_from_host(**self._host,
                                                      pool_kwargs=self._pool_kwargs)
        raw = pool.urlopen("GET", target, headers=headers, redirect=False, retries=False,
                           preload_content=False, decode_content=False,
                           timeout=self._timeout, assert_same_host=False)
        if raw.status in (301, 302, 303, 307, 308) and raw.headers.get("Location"):
            location = urljoin(url, raw.headers["Location"])
            raw.drain_conn()
            raw.release_conn()
            return self._session.get(location, stream=True, timeout=(
                self._timeout.connect_timeout, self._timeout.read_timeout))
        resp = requests.Response()
        resp.raw, resp.status_code, resp.reason = raw, raw.status, raw.reason
        resp.headers = CaseInsensitiveDict(raw.headers)
        resp.url = url
        return resp
