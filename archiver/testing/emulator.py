"""A faithful local emulator of the Plangrep Open API (``/api/open/v1``), for tests and demos.

Usage::

    with Emulator() as emu:
        emu.add_project(project_id="proj_a", name="A")
        job = emu.add_job("proj_a", artifacts=[ArtifactSpec("a/b.bin", size=10 << 20)])
        requests.get(f"{emu.base_url}/jobs/{job['id']}",
                     headers={"Authorization": f"Bearer {emu.api_key}"})

Two servers run on 127.0.0.1 (standard library only): the API on ``base_url`` and a
"storage" server on another port that serves pre-signed redirects and ``resultUrl``.

Emulator decisions (the docs are silent; see docs/plangrep-api.md, "Decisions"):

* Errors are ``{"error": {"code", "message"}}``: ``unauthorized`` 401, ``forbidden`` 403
  (missing scope: ``jobs:read`` for projects/jobs/result, ``artifacts:read`` for artifacts),
  ``not_found`` 404, ``artifact_not_in_result`` 404, ``invalid_request`` 400 (no ``path``),
  ``result_not_available`` 409, ``job_expired`` 410, ``rate_limited`` 429 (``Retry-After``),
  ``internal`` 503, ``method_not_allowed`` 405 (anything but GET/HEAD: job creation is
  not emulated).
* **Range requests are not supported**: a ``Range`` header is ignored and the answer is
  always ``200`` with the full body.
* Artifact bytes carry no checksum/ETag; ``Content-Disposition`` is ``attachment;
  filename="<basename>"`` (plus ``filename*`` when not ASCII) unless the spec overrides it.
  Compressed artifacts are served as the compressed bytes, without ``Content-Encoding``.
* A job is expired once ``expire()`` was called, its status was set to ``expired``, or the
  emulator clock (``emu.clock``) passed ``expiresAt`` (``createdAt`` + 7 days by default).
  Expired jobs still appear in ``/projects/{p}/jobs`` with status ``expired``; every
  ``/jobs/{id}…`` route (and the project artifact route, for their entity artifacts)
  answers 410 ``job_expired``.
* ``/jobs/{id}/artifact`` serves every path referenced anywhere in that job's result
  (entity artifacts included); ``/projects/{p}/artifact`` serves the entity artifacts of
  the project's jobs that have a result.
* Once terminal, a job is frozen: ``set_status`` refuses to leave a terminal status except
  towards ``expired``. The result is serialised once and served byte-identically.
* ``resultUrl`` points at the storage server (valid while the job is not expired).
* Webhooks and job progression over time: :mod:`archiver.testing.emulator_webhooks`
  (``configure_webhooks``, ``progress``, ``webhook_secret``). They keep running while the
  API servers are stopped (an API outage does not stop Plangrep's own workers); ``close()``
  (or leaving the ``with`` block) stops everything.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

from .emulator_data import (
    AUTO_PLACEMENT,
    RETENTION,
    SHAPES,
    STATUSES,
    TERMINAL,
    WITH_RESULT,
    Artifact,
    ArtifactSpec,
    JobState,
    artifact_url,
    build_result,
    content_disposition_for,
    decompress,
    iso,
    to_utc,
)
from .emulator_http import (
    ApiHandler,
    EmulatorServer,
    Faults,
    RequestLog,
    RequestRecord,
    StorageHandler,
)
from .emulator_routes import RoutesMixin
from .emulator_webhooks import Timeline, WebhookSender, WebhookSettings, job_secret

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_SCOPES",
    "ArtifactSpec",
    "Emulator",
    "Faults",
    "RequestRecord",
    "content_disposition_for",
    "decompress",
    "serve",
]

DEFAULT_API_KEY = "pk_test_emulator"
DEFAULT_SCOPES = frozenset({"jobs:read", "jobs:write", "artifacts:read"})
API_PREFIX = "/api/open/v1"
_ARTIFACT_BYTES_LIMIT = 256 << 20


class Emulator(RoutesMixin):
    """In-process Plangrep Open API. Thread-safe; see the module docstring for its rules."""

    api_prefix = API_PREFIX

    def __init__(self, api_keys: dict[str, set[str]] | None = None, seed: int | str = 0,
                 latency: float = 0.0, *, verbose: bool = False):
        if api_keys is None:
            api_keys = {DEFAULT_API_KEY: set(DEFAULT_SCOPES)}
        self.api_keys: dict[str, set[str]] = {k: set(v) for k, v in api_keys.items()}
        self.seed = seed
        self.verbose = verbose
        self.faults = Faults(latency=latency)
        self.requests = RequestLog()
        self.storage_saw_authorization = False
        self.clock = lambda: datetime.now(timezone.utc)  # replace to move time
        self._lock = threading.RLock()
        self._ids = random.Random(f"emulator-ids|{seed}")
        self._projects: dict[str, dict] = {}
        self._entity_artifacts: dict[str, dict[str, Artifact]] = {}
        self._jobs: dict[str, JobState] = {}
        self._tokens: dict[str, Artifact] = {}
        self._secret = f"emulator-storage|{seed}".encode()
        self._servers: list[EmulatorServer] = []
        self._threads: list[threading.Thread] = []
        self._ports: tuple[int, int] | None = None
        self.webhooks = WebhookSender(self)
        self.timeline = Timeline(self)

    # ------------------------------------------------------------------ lifecycle
    def start(self, port: int | None = None) -> Emulator:
        """Serve on 127.0.0.1:``port`` (a free port if 0; None: the previous port, else free)."""
        if self._servers:
            raise RuntimeError("emulator already started")
        previous = self._ports or (0, 0)
        api = self._bind(previous[0] if port is None else port, ApiHandler, port is None)
        try:
            storage = self._bind(previous[1], StorageHandler, True)
        except BaseException:
            api.server_close()
            raise
        self._servers = [api, storage]
        self._ports = (api.server_address[1], storage.server_address[1])
        for server, name in ((api, "api"), (storage, "storage")):
            t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                 name=f"plangrep-emulator-{name}:{server.server_address[1]}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        with self._lock:  # results of jobs added before start() need the port for their URLs
            for job in self._jobs.values():
                self._build_result(job)
        return self

    def _bind(self, port: int, handler: type, fallback: bool) -> EmulatorServer:
        try:
            return EmulatorServer(port, handler, self)
        except OSError:
            if not (fallback and port):
                raise
            return EmulatorServer(0, handler, self)

    def stop(self) -> None:
        """Stop both servers and cut open connections (idempotent)."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.stop()
        threads, self._threads = self._threads, []
        for t in threads:
            t.join(timeout=5)

    def __enter__(self) -> Emulator:  # noqa: PYI034 - py3.10 has no typing.Self
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the servers, the timeline and the webhook sender."""
        self.stop()
        self.timeline.close()
        self.webhooks.close()

    # ------------------------------------------------------------------ webhooks, time
    def configure_webhooks(self, url: str | None, **knobs) -> WebhookSettings:
        """POST signed ``job.status_changed`` deliveries to ``url`` on every status change
        (knobs: :class:`~archiver.testing.emulator_webhooks.WebhookSettings`)."""
        return self.webhooks.configure(url, **knobs)

    def webhook_secret(self, job_id: str) -> str:
        """The job's ``wss_…`` webhook signing secret (shown once at creation upstream)."""
        return job_secret(self.seed, job_id)

    def progress(self, job_id: str, steps: list[tuple[float, str]]) -> None:
        """Move the job to each ``(seconds from now, status)`` in turn (``"expired"`` too)."""
        self.timeline.progress(job_id, steps)

    @property
    def running(self) -> bool:
        return bool(self._servers)

    @property
    def port(self) -> int:
        if not self._ports:
            raise RuntimeError("emulator not started: call start() first")
        return self._ports[0]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    @property
    def storage_url(self) -> str:
        self.port  # noqa: B018 - raises when never started
        return f"http://127.0.0.1:{self._ports[1]}"

    @property
    def api_key(self) -> str | None:
        return next(iter(self.api_keys), None)

    def add_key(self, key: str | None = None,
                scopes: set[str] | list[str] | tuple[str, ...] = DEFAULT_SCOPES) -> str:
        """Register another API key with ``scopes``; returns the key."""
        with self._lock:
            key = key or f"pk_test_{self._ids.getrandbits(96):024x}"
            self.api_keys[key] = set(scopes)
        return key

    def scopes_for(self, authorization: str | None) -> set[str] | None:
        """Scopes of the key in an ``Authorization: Bearer`` header; None when refused."""
        if not authorization:
            return None
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        return self.api_keys.get(key.strip())

    # ------------------------------------------------------------------ data
    def _new_id(self, prefix: str, taken: dict) -> str:
        while True:
            candidate = f"{prefix}_{self._ids.getrandbits(64):016x}"
            if candidate not in taken:
                return candidate

    def _now(self) -> datetime:
        return to_utc(self.clock(), datetime.now(timezone.utc))

    def add_project(self, project_id: str | None = None, name: str | None = None) -> dict:
        """Create a project (or rename an existing one); returns the Project."""
        with self._lock:
            project_id = project_id or self._new_id("proj", self._projects)
            project = self._projects.get(project_id)
            if project is None:
                now = iso(self._now())
                project = {"id": project_id, "name": name or project_id,
                           "createdAt": now, "updatedAt": now}
                self._projects[project_id] = project
                self._entity_artifacts[project_id] = {}
            elif name is not None:
                project["name"] = name
            return dict(project)

    def add_job(self, project_id: str, status: str = "completed", job_id: str | None = None,
                artifacts: list[ArtifactSpec] | None = None,
                created_at: datetime | str | None = None,
                expires_at: datetime | str | None = None, shape: str = "documents", *,
                external_id: str | None = None) -> dict:
        """Add a job (its project is created when missing); returns the Job as served.

        ``artifacts=None`` gives two small default artifacts; ``[]`` gives none.
        ``shape="flat"`` lists every artifact only in the top-level ``result.artifacts``.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {STATUSES}")
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")
        with self._lock:
            if project_id not in self._projects:
                self.add_project(project_id=project_id)
            job_id = job_id or self._new_id("job", self._jobs)
            if job_id in self._jobs:
                raise ValueError(f"job {job_id} already exists")
            if artifacts is None:
                artifacts = [ArtifactSpec(f"results/{job_id}/normalized-output.json", 2048),
                             ArtifactSpec("thumbnails/page-1.png", 1536, type="thumbnail")]
            arts, entity = [], self._entity_artifacts[project_id]
            for i, spec in enumerate(artifacts):
                if any(a.path == spec.path for a in arts):
                    raise ValueError(f"job {job_id}: duplicate artifact path {spec.path!r}")
                where = "result" if shape == "flat" else spec.where or AUTO_PLACEMENT[i % 4]
                absolute = spec.absolute if spec.absolute is not None else bool(i % 2)
                art = Artifact(spec, self.seed, job_id, project_id, where, absolute)
                if where == "entity" and spec.path in entity:
                    raise ValueError(f"project {project_id}: entity artifact path {spec.path!r} "
                                     f"already belongs to job {entity[spec.path].job_id}")
                arts.append(art)
            now = self._now()
            created = to_utc(created_at, now)
            job = JobState(job_id, project_id, status, created,
                           to_utc(expires_at, created + RETENTION), shape, arts, external_id,
                           len(self._jobs))
            if status in TERMINAL:
                job.completed_at = max(created, min(created + timedelta(minutes=3), now))
                job.updated_at = job.completed_at
                job.had_result = status in WITH_RESULT or status == "expired"
            self._jobs[job_id] = job
            for art in arts:
                self._tokens[art.token] = art
                if art.where == "entity":
                    entity[art.path] = art
            self._build_result(job)
            return self._job_dict(job)

    def _build_result(self, job: JobState) -> None:
        if job.had_result and job.result_bytes is None and self._ports:
            job.result_bytes = build_result(job, self.base_url, API_PREFIX)

    def set_status(self, job_id: str, status: str) -> dict:
        """Move a job to ``status``; completing it builds its result. Terminal jobs are frozen."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {STATUSES}")
        if status == "expired":
            return self.expire(job_id)
        with self._lock:
            job = self._job(job_id)
            if status != job.status:
                if job.status in TERMINAL:
                    raise ValueError(f"job {job_id} is {job.status}: terminal jobs are frozen")
                now = max(self._now(), job.created_at)
                job.status, job.updated_at = status, now
                if status in TERMINAL:
                    job.completed_at = now
                if status in WITH_RESULT:
                    job.partial = status == "completed_with_errors"
                    job.had_result = True
                    self._build_result(job)
                self.webhooks.notify(self._job_dict(job))
            return self._job_dict(job)

    def expire(self, job_id: str) -> dict:
        """The job (and its result, artifacts) become inaccessible: 410 ``job_expired``."""
        with self._lock:
            job = self._job(job_id)
            if job.status != "expired":
                job.status, job.updated_at = "expired", max(self._now(), job.created_at)
                self.webhooks.notify(self._job_dict(job))
            return self._job_dict(job)

    def _job(self, job_id: str) -> JobState:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"no job {job_id!r} in the emulator") from None

    def _job_dict(self, job: JobState) -> dict:
        url = None
        if self._ports and job.had_result:
            resource = f"/results/{job.id}/result.json"
            expires = str(int(job.expires_at.timestamp()))
            url = (f"{self.storage_url}{resource}?X-Emu-Expires={expires}"
                   f"&X-Emu-Signature={self._sign(resource, expires)}")
        return job.to_dict(self._now(), url)

    def job(self, job_id: str) -> dict:
        """The Job as ``GET /jobs/{id}`` would describe it (status ``expired`` included)."""
        with self._lock:
            return self._job_dict(self._job(job_id))

    def result_bytes(self, job_id: str) -> bytes | None:
        """The exact result bytes (None while the job has none, or before ``start()``)."""
        with self._lock:
            return self._job(job_id).result_bytes

    def artifact_paths(self, job_id: str) -> list[str]:
        """Decoded ``path`` values referenced in the job's result ([] when it has none)."""
        with self._lock:
            job = self._job(job_id)
            return list(job.artifacts) if job.had_result else []

    def _artifact(self, job_id: str, path: str) -> Artifact:
        try:
            return self._job(job_id).artifacts[path]
        except KeyError:
            raise KeyError(f"job {job_id!r} has no artifact {path!r}") from None

    def artifact_url(self, job_id: str, path: str) -> str:
        """Absolute URL of the route serving ``path`` (job route, or project for entities)."""
        return artifact_url(self._artifact(job_id, path), self.base_url)

    def artifact_bytes(self, job_id: str, path: str) -> bytes:
        """Exactly the bytes served for ``path`` (up to 256 MiB; else iter_artifact_bytes)."""
        art = self._artifact(job_id, path)
        if art.served_length() > _ARTIFACT_BYTES_LIMIT:
            raise ValueError(f"{path!r} is {art.served_length()} bytes: use iter_artifact_bytes")
        return b"".join(art.iter_served())

    def iter_artifact_bytes(self, job_id: str, path: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        """Exactly the bytes served for ``path``, in ``chunk``-sized pieces (the last shorter)."""
        return _exact_chunks(self._artifact(job_id, path).iter_served(chunk), chunk)

    def plain_bytes(self, job_id: str, path: str) -> bytes:
        """The uncompressed content (== artifact_bytes unless the spec has ``compress``)."""
        return b"".join(self._artifact(job_id, path).iter_plain())

    def iter_plain_bytes(self, job_id: str, path: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        """The uncompressed content in ``chunk``-sized pieces (the last shorter)."""
        return _exact_chunks(self._artifact(job_id, path).iter_plain(chunk), chunk)

    def count(self, method: str | None = None, route: str | None = None) -> int:
        """How many recorded requests match ``method`` and ``route`` (None: any)."""
        return sum(1 for r in self.requests.snapshot()
                   if (method is None or r.method == method.upper())
                   and (route is None or r.route == route))

    # ------------------------------------------------------------------ demo
    def load_demo(self) -> list[dict]:
        from .emulator_demo import load_demo

        return load_demo(self)


def _exact_chunks(pieces: Iterator[memoryview], chunk: int) -> Iterator[bytes]:
    chunk = max(1, int(chunk))
    buf = bytearray()
    for piece in pieces:
        if not buf and len(piece) == chunk:
            yield bytes(piece)
            continue
        buf += piece
        while len(buf) >= chunk:
            yield bytes(buf[:chunk])
            del buf[:chunk]
    if buf:
        yield bytes(buf)


def serve(port: int = 8765, demo: bool = True) -> None:
    """Run an emulator on 127.0.0.1:``port`` (with the demo data) until Ctrl-C."""
    emu = Emulator()
    emu.start(port=port)
    try:
        jobs = emu.load_demo() if demo else []
        print(f"Plangrep API emulator: {emu.base_url}", flush=True)
        print(f"API key: {emu.api_key}", flush=True)
        print(f"{len(emu._projects)} project(s), {len(jobs)} job(s); Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
