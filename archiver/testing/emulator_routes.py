"""How the emulator answers requests: route + state -> JSON, error or artifact.

A mixin of :class:`archiver.testing.emulator.Emulator` (it reads the emulator's state under
its lock); the HTTP handlers in :mod:`archiver.testing.emulator_http` call these methods.
"""

from __future__ import annotations

import hmac
import json
import time
from urllib.parse import unquote

from .emulator_data import WITH_RESULT, Artifact

PRESIGN_TTL = 900  # seconds a redirect URL stays valid


class RoutesMixin:
    def resolve(self, route: str, params: dict, query: dict) -> tuple:
        """Answer an authorised API request: ("json", status, body) | ("error", status, code,
        message) | ("artifact", Artifact)."""
        now = self._now()
        with self._lock:
            if route == "projects":
                return self._json({"projects": [dict(p) for p in self._projects.values()]})
            if route in ("jobs", "project_artifact"):
                project_id = params["project"]
                if project_id not in self._projects:
                    return ("error", 404, "not_found", f"Project {project_id} not found.")
                if route == "jobs":
                    jobs = sorted((j for j in self._jobs.values() if j.project_id == project_id),
                                  key=lambda j: (j.created_at, j.seq), reverse=True)
                    return self._json({"jobs": [self._job_dict(j) for j in jobs]})
                path = query.get("path")
                if not path:
                    return ("error", 400, "invalid_request", "The path parameter is required.")
                art = self._entity_artifacts[project_id].get(path)
                job = self._jobs[art.job_id] if art else None
                if job is not None and job.effective_status(now) == "expired":
                    return ("error", 410, "job_expired", f"Job {job.id} has expired.")
                if job is None or job.status not in WITH_RESULT:
                    return ("error", 404, "artifact_not_in_result",
                            "The path is not referenced by this project.")
                return ("artifact", art)
            job = self._jobs.get(params["job"])
            if job is None:
                return ("error", 404, "not_found", f"Job {params['job']} not found.")
            if job.effective_status(now) == "expired":
                return ("error", 410, "job_expired", f"Job {job.id} has expired.")
            if route == "job":
                return self._json({"job": self._job_dict(job)})
            if job.status not in WITH_RESULT or job.result_bytes is None:
                return ("error", 409, "result_not_available",
                        f"Job {job.id} is {job.status}; it has no result.")
            if route == "result":
                return ("json", 200, job.result_bytes)
            path = query.get("path")
            if not path:
                return ("error", 400, "invalid_request", "The path parameter is required.")
            art = job.artifacts.get(path)
            if art is None:
                return ("error", 404, "artifact_not_in_result",
                        "The path is not referenced by this job's result.")
            return ("artifact", art)

    @staticmethod
    def _json(obj: object) -> tuple:
        return ("json", 200, json.dumps(obj, ensure_ascii=False).encode("utf-8"))

    def _sign(self, resource: str, expires: str) -> str:
        return hmac.new(self._secret, f"{resource}|{expires}".encode(), "sha256").hexdigest()[:32]

    def presign(self, art: Artifact) -> str:
        """A pre-signed storage URL for ``art`` (what a redirected artifact GET points to)."""
        resource = f"/blobs/{art.token}"
        expires = str(int(time.time()) + PRESIGN_TTL)
        return (f"{self.storage_url}{resource}?X-Emu-Expires={expires}"
                f"&X-Emu-Signature={self._sign(resource, expires)}")

    def resolve_storage(self, path: str, query: dict) -> tuple:
        resource = unquote(path)
        expires, signature = query.get("X-Emu-Expires", ""), query.get("X-Emu-Signature", "")
        if not (expires.isdigit() and hmac.compare_digest(signature, self._sign(resource, expires))):
            return ("error", 403, "forbidden", "Signature does not match.")
        if int(expires) < time.time() and resource.startswith("/blobs/"):
            return ("error", 403, "request_expired", "The pre-signed URL has expired.")
        parts = resource.strip("/").split("/")
        with self._lock:
            if parts[0] == "blobs" and len(parts) == 2 and parts[1] in self._tokens:
                art = self._tokens[parts[1]]
                job = self._jobs[art.job_id]
            elif parts[0] == "results" and len(parts) == 3 and parts[1] in self._jobs:
                art, job = None, self._jobs[parts[1]]
            else:
                return ("error", 404, "not_found", "No such object.")
            if job.effective_status(self._now()) == "expired":
                return ("error", 410, "job_expired", f"Job {job.id} has expired.")
            if art is None:
                return ("json", 200, job.result_bytes) if job.result_bytes is not None else (
                    "error", 404, "not_found", "No such object.")
            return ("artifact", art)
