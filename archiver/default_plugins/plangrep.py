"""The Plangrep source (YAML ``type: plangrep``): jobs, results and artifact streams.

One pooled :class:`requests.Session` serves every thread. Every request has a connect
timeout and an idle-read timeout (``timeout=(connect_timeout, read_timeout)``: the read
timeout bounds the silence between two bytes, not the whole transfer).

With ``rate_limit:`` configured, every request first takes a token of the fleet API
budget (:meth:`PlangrepSource.use_budget`, :mod:`archiver.budget`), and a 429 with
``Retry-After`` pauses the whole fleet.

Retries (:class:`archiver.retry.RetryPolicy`, full-jitter exponential backoff) cover
connection errors, 5xx, 408 and 429, honouring ``Retry-After``, for every request up to
its response headers and, for JSON endpoints, its body. urllib3's own retries are off so
that the policy sees every failure. An artifact body failing midway raises
``SourceError(retryable=True)`` from the :class:`Download`; the pipeline restarts the whole
artifact with :attr:`PlangrepSource.retry_policy`. 401/403 raise
:class:`~archiver.errors.AuthError` after a single request; 404, 409, 410 and other 4xx
raise a non-retryable ``SourceError``. Every message names the job and artifact path.

Where the API key goes (security decision): the key is only ever sent to the origin
(scheme, host, port) of ``base_url``.

* An artifact is always requested as ``{base_url}/{jobs|projects}/{id}/artifact`` with
  ``params={"path": artifact.path}``, even when the result gave an absolute URL: a URL on
  another host (a hostile or buggy result) therefore never receives the key. The path is
  percent-decoded once when read from the URL and re-encoded once by requests.
* :class:`BearerAuth` refuses to attach the key to any other origin, and requests drops
  ``Authorization`` when a redirect (e.g. to pre-signed storage) changes host or port.
* The key is a :class:`pydantic.SecretStr`; it is never formatted into a log line,
  exception message or repr, and server-provided text is scrubbed of it before quoting.

Bytes are served exactly as sent: requests ask for ``Accept-Encoding: identity`` and
artifact bodies are read with ``decode_content=False``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import requests
from pydantic import Field, SecretStr, field_validator

from .. import __version__
from ..cancel import cancellable_adapter
from ..components import ComponentConfig, Download, Source
from ..errors import AuthError, SourceError
from ..hookspecs import hookimpl
from ..model import Artifact, Job
from ..retry import RetryPolicy
from . import plangrep_artifacts
from .plangrep_direct import DirectGetter
from .plangrep_http import (
    BODY_ERRORS,
    BearerAuth,
    PlangrepDownload,
    Scrubber,
    Session,
    error_from_exception,
    error_from_response,
    origin,
)

log = logging.getLogger("archiver.plangrep")

DEFAULT_BASE_URL = "https://plangrep.com/api/open/v1"


class PlangrepConfig(ComponentConfig):
    """Configuration of ``type: plangrep``."""

    base_url: str = DEFAULT_BASE_URL
    api_key: SecretStr
    projects: list[str] | None = None  # None: every project the key can list
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)  # idle time between two bytes
    retries: int = Field(5, ge=0)  # attempts after the first
    backoff_base: float = Field(0.5, ge=0)
    backoff_max: float = Field(30.0, ge=0)
    chunk_size: int = Field(1024 * 1024, gt=0)
    pool_size: int = Field(16, ge=1)  # connections kept per host: match the concurrency

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        scheme, host, _ = origin(value)
        if scheme not in ("http", "https") or not host:
            raise ValueError(f"must be an http(s) URL such as {DEFAULT_BASE_URL}, got {value!r}")
        if "?" in value or "#" in value:
            raise ValueError("must not carry a query or fragment")
        return value

    @field_validator("api_key")
    @classmethod
    def _not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty")
        return value


class PlangrepSource(Source):
    """Reads jobs, results and artifacts from the Plangrep Open API (see module docs).

    ``pool_size`` overrides the configured connection-pool size (the pipeline passes its
    concurrency). ``retry_policy`` is the policy used for requests; the pipeline reuses
    it for whole-artifact restarts.
    """

    name = "plangrep"
    Config = PlangrepConfig
    config: PlangrepConfig

    def __init__(self, config: PlangrepConfig, *, pool_size: int | None = None,
                 retry_policy: RetryPolicy | None = None):
        super().__init__(config)
        self.base_url = config.base_url
        self._origin = origin(self.base_url)
        self._timeout = (config.connect_timeout, config.read_timeout)
        self._scrub = Scrubber(config.api_key)
        self.retry_policy = retry_policy or RetryPolicy(
            config.retries, config.backoff_base, config.backoff_max)
        self.pool_size = pool_size or config.pool_size
        session = Session()
        # max_retries=0: urllib3 must not retry behind our back (Retry-After, counting).
        # Cancellable: a stop cuts a download blocked in the socket (archiver.cancel).
        adapter = cancellable_adapter(pool_connections=4, pool_maxsize=self.pool_size,
                                      max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.auth = BearerAuth(config.api_key, self.base_url)
        session.headers.update({
            "User-Agent": f"archiver/{__version__} {requests.utils.default_user_agent()}",
            "Accept-Encoding": "identity",
        })
        self._session = session
        self._direct = DirectGetter(session, self.base_url, config.api_key, self._timeout)
        self._budget: Any = None  # the fleet API budget (use_budget), None: no limit

    def __repr__(self) -> str:
        return (f"PlangrepSource(base_url={self.base_url!r}, projects={self.config.projects!r}, "
                f"pool_size={self.pool_size})")

    def close(self) -> None:
        self._session.close()

    def use_budget(self, budget: Any) -> None:
        """Every request first takes one token of ``budget`` (``rate_limit:``, see
        :class:`archiver.budget.FleetBudget`); a 429 with ``Retry-After`` pauses it for the
        whole fleet before the retry policy waits."""
        self._budget = budget

    # ------------------------------------------------------------------ requests

    def _send(self, url: str, what: str, params: dict | None = None) -> requests.Response:
        """One attempt: the response with its body unread, or a classified SourceError."""
        if self._budget is not None and not self._budget.acquire():
            raise SourceError(f"{what}: not sent, archiver is stopping")
        try:
            if params is not None and self._direct.enabled:  # artifact GETs: see its module
                resp = self._direct.get(f"{url}?{urlencode(params)}")
            else:
                resp = self._session.get(url, params=params, stream=True,
                                         timeout=self._timeout)
        except (requests.RequestException, *BODY_ERRORS) as exc:
            raise error_from_exception(exc, what, self._scrub) from None
        log.debug("GET %s -> %s", what, resp.status_code)
        if not 200 <= resp.status_code < 300 or resp.status_code == 206:
            error = error_from_response(resp, what, self._origin, self._scrub)
            if error.status == 429 and error.retry_after and self._budget is not None:
                self._budget.pause(error.retry_after)  # every worker waits, not only this one
            raise error
        return resp

    def _get_bytes(self, route: str, what: str) -> bytes:
        def attempt() -> bytes:
            resp = self._send(self.base_url + route, what)
            try:
                return resp.content
            except (*BODY_ERRORS,) as exc:
                raise error_from_exception(exc, what, self._scrub) from None
            finally:
                resp.close()

        return self.retry_policy.call(attempt, describe=what)

    def _get_json(self, route: str, what: str) -> Any:
        body = self._get_bytes(route, what)
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise SourceError(f"{what}: GET {route} did not return valid JSON "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None

    @staticmethod
    def _seg(value: str) -> str:
        return quote(value, safe="")

    # ------------------------------------------------------------------ Source API

    def list_projects(self) -> list[str]:
        """Ids of every project the key can list (``GET /projects``)."""
        data = self._get_json("/projects", "listing projects")
        projects = data.get("projects") if isinstance(data, dict) else None
        if not isinstance(projects, list):
            raise SourceError("listing projects: GET /projects returned no 'projects' list")
        ids = []
        for p in projects:
            pid = p.get("id") if isinstance(p, dict) else None
            if not isinstance(pid, str) or not pid:
                raise SourceError(f"listing projects: a project has no id: {str(p)[:200]}")
            ids.append(pid)
        return ids

    def _job(self, raw: Any, what: str, project_id: str | None = None) -> Job:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) \
                or not isinstance(raw.get("status"), str):
            raise SourceError(f"{what}: a job without a string id and status: {str(raw)[:200]}")
        project = raw.get("projectId") if isinstance(raw.get("projectId"), str) else project_id
        return Job(id=raw["id"], project_id=project or "", status=raw["status"], raw=raw)

    def iter_jobs(self) -> Iterator[Job]:
        projects = self.config.projects
        if projects is None:
            projects = self.list_projects()
        seen: set[str] = set()
        for project_id in dict.fromkeys(projects):
            what = f"listing jobs of project {project_id}"
            data = self._get_json(f"/projects/{self._seg(project_id)}/jobs", what)
            jobs = data.get("jobs") if isinstance(data, dict) else None
            if not isinstance(jobs, list):
                raise SourceError(f"{what}: the response has no 'jobs' list")
            for raw in jobs:
                job = self._job(raw, what, project_id)
                if job.id not in seen:
                    seen.add(job.id)
                    yield job

    def preflight(self) -> str:
        """``GET /projects`` once (no retry): the key, the host and the base URL."""
        url = self.base_url + "/projects"
        try:
            resp = self._send(url, f"GET {url}")
        except AuthError as exc:
            raise AuthError(f"the API key was refused: {exc}", status=exc.status) from None
        except SourceError as exc:
            if exc.status is None:
                raise SourceError(f"cannot reach the API: {exc}") from None
            raise SourceError(f"{exc}; is source.base_url right? It is the API's root, "
                              "ending in /api/open/v1", status=exc.status) from None
        try:
            body = resp.content
        finally:
            resp.close()
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
        projects = data.get("projects") if isinstance(data, dict) else None
        if not isinstance(projects, list):
            raise SourceError(f"GET {url} answered, but not as the Plangrep Open API does "
                              "(no 'projects' list): is source.base_url right? It is the "
                              "API's root, ending in /api/open/v1")
        visible = {p.get("id") for p in projects if isinstance(p, dict)}
        missing = [p for p in (self.config.projects or ()) if p not in visible]
        found = f"API key accepted at {self.base_url}; {len(projects)} project(s) visible"
        if missing:
            found += f" (configured but not listed: {', '.join(missing)})"
        return found

    def get_job(self, job_id: str) -> Job:
        what = f"job {job_id}"
        data = self._get_json(f"/jobs/{self._seg(job_id)}", what)
        raw = data.get("job") if isinstance(data, dict) and "job" in data else data
        return self._job(raw, what)

    def read_result(self, job: Job) -> bytes:
        what = f"result of job {job.id}"
        body = self._get_bytes(f"/jobs/{self._seg(job.id)}/result", what)
        try:
            json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise SourceError(f"{what}: GET /jobs/{job.id}/result did not return valid JSON "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
        return body

    def find_artifacts(self, job: Job, result: bytes) -> list[Artifact]:
        return plangrep_artifacts.find_artifacts(job, result)

    def artifact_request(self, artifact: Artifact) -> tuple[str, dict[str, str]]:
        """(url, params) of an artifact, always on ``base_url`` (see module docs)."""
        scope = artifact.scope if artifact.scope in ("jobs", "projects") else "jobs"
        scope_id = artifact.scope_id or artifact.job_id
        return (f"{self.base_url}/{scope}/{self._seg(scope_id)}/artifact",
                {"path": artifact.path})

    def open(self, artifact: Artifact) -> Download:
        what = f"job {artifact.job_id} artifact {artifact.path!r}"
        url, params = self.artifact_request(artifact)
        resp = self.retry_policy.call(lambda: self._send(url, what, params), describe=what)
        return PlangrepDownload(resp, artifact, self.config.chunk_size)


@hookimpl
def archiver_register_sources(register) -> None:
    register(PlangrepSource)
