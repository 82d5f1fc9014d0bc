"""The fetch loop: jobs -> artifacts -> one download -> transform chains -> every sink.

Concurrency: a pool of job workers reads results and hands artifacts to a pool of
artifact workers (both ``concurrency`` threads). Memory per artifact in flight is about
``chunk_size`` × (1 + stages) plus what each sink's writer declares (``memory_bound``).
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from . import keys as keymod
from .chain import build_chains, chain_facts, stored_digests
from .components import ArtifactContext, Sink, Source, Transform
from .config import LoadedConfig
from .errors import ArchiverError, AuthError, SinkError, SourceError, TransformError
from .ledger import ARCHIVED, INCOMPLETE, LOST, NOTHING, WAITING, Ledger
from .model import Artifact, ArtifactResult, Job
from .plugins import Plugins
from .retry import RetryPolicy
from .writeout import Interrupted, Item, store_item

log = logging.getLogger("archiver.pipeline")


@dataclass
class RunReport:
    """What one pass did; ``exit_code`` follows docs/cli.md."""

    archived: list[str] = field(default_factory=list)
    incomplete: dict[str, list[str]] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)
    nothing_to_store: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    skipped: int = 0
    bytes_received: int = 0
    objects_written: int = 0
    fatal: str | None = None
    auth_refused: bool = False      # the API refused the key: retrying cannot help
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        if self.fatal:
            return 3
        if self.lost:
            return 4
        return 1 if self.incomplete else 0

    def as_dict(self) -> dict[str, Any]:
        return {"archived": self.archived, "incomplete": self.incomplete, "lost": self.lost,
                "nothing_to_store": self.nothing_to_store, "waiting": self.waiting,
                "skipped_already_archived": self.skipped, "bytes_received": self.bytes_received,
                "objects_written": self.objects_written, "fatal": self.fatal,
                "interrupted": self.interrupted, "exit_code": self.exit_code}


def _instantiate(built, **kw):
    return built.cls(built.config, **kw)


class Pipeline:
    """One configured archiver: source, transforms, sinks and ledger, wired together."""

    def __init__(self, loaded: LoadedConfig, plugins: Plugins, ledger: Ledger,
                 on_progress: Callable[[str, dict[str, Any]], None] | None = None):
        self.settings = loaded.settings
        self.plugins, self.ledger = plugins, ledger
        src_cfg = loaded.source.config
        if "pool_size" in type(src_cfg).model_fields and "pool_size" not in src_cfg.model_fields_set:
            src_cfg = src_cfg.model_copy(update={"pool_size": self.settings.concurrency * 2 + 2})
        self.source: Source = loaded.source.cls(src_cfg)
        self.sinks: dict[str, Sink] = {b.label: _instantiate(b, label=b.label) for b in loaded.sinks}
        self.common: list[Transform] = [_instantiate(b) for b in loaded.transforms]
        self.per_sink: dict[str, list[Transform]] = {
            name: [_instantiate(b) for b in lst] for name, lst in loaded.sink_transforms.items()}
        self.stop = threading.Event()       # abort in-flight writers now
        self.draining = threading.Event()   # start nothing new; in-flight objects finish
        self.policy = RetryPolicy(retries=self.settings.artifact_attempts - 1)
        self.on_progress = on_progress or (lambda kind, data: None)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        self.draining.set()
        self.stop.set()

    def request_drain(self) -> None:
        """Graceful shutdown, first step: objects being written finish, nothing new starts
        (their jobs stay incomplete and are resumed by the next run)."""
        self.draining.set()

    def close(self) -> None:
        for comp in [self.source, *self.sinks.values()]:
            try:
                comp.close()
            except Exception:  # closing must not hide the run's outcome
                log.exception("closing %r failed", comp)

    def preflight(self) -> None:
        for sink in self.sinks.values():
            sink.preflight()

    def recover(self) -> int:
        """Discard what writers killed mid-way left behind (temp files, open uploads)."""
        n = 0
        for pending_id, sink_name, token, _started in self.ledger.list_pending():
            sink = self.sinks.get(sink_name)
            if sink is None:
                continue  # that sink is no longer configured; keep the record for cleanup
            try:
                sink.discard(token)
            except ArchiverError as exc:
                log.warning("sink %s: could not discard a crashed writer: %s", sink_name, exc)
                continue
            self.ledger.remove_pending(pending_id)
            self.ledger.event("discarded", "crashed writer cleaned up", sink=sink_name)
            n += 1
        return n

    # ------------------------------------------------------------------ the pass
    def run(self, job_ids: Iterable[str] | None = None, *,
            jobs: Iterable[Job] | None = None, preflight: bool = True) -> RunReport:
        """One pass. ``job_ids``: archive these (re-read through the API) even if the
        ledger has them; ``jobs``: already-read jobs (watch mode), triaged like a listing;
        neither: every job the source lists. ``preflight=False`` skips the sinks'
        preflight and crash recovery (a long-running caller does them once)."""
        report = RunReport()
        try:
            if preflight:
                self.preflight()
                self.recover()
            states = self.ledger.job_states()
            explicit = job_ids is not None
            if explicit:
                jobs = (self.source.get_job(j) for j in job_ids)
            elif jobs is None:
                jobs = self.source.iter_jobs()
            c = self.settings.concurrency
            with ThreadPoolExecutor(c, thread_name_prefix="archiver-job") as job_pool, \
                    ThreadPoolExecutor(c, thread_name_prefix="archiver-artifact") as art_pool:
                futures = []
                for job in jobs:
                    if self.draining.is_set():
                        break
                    if self._triage(job, states.get(job.id), explicit, report):
                        futures.append(job_pool.submit(self._job, job, art_pool, report))
                for fut in futures:
                    fut.result()
        except AuthError as exc:
            report.fatal, report.auth_refused = str(exc), True
            self.stop.set()
        except SourceError as exc:
            report.fatal = str(exc)
        except SinkError as exc:
            report.fatal = str(exc)
        if self.draining.is_set() and not report.fatal:
            report.interrupted = True
        return report

    def _triage(self, job: Job, previous: str | None, explicit: bool, report: RunReport) -> bool:
        """True when the job needs work; records the other outcomes."""
        if previous in (ARCHIVED, NOTHING, LOST) and not explicit:
            report.skipped += 1
            return False
        if not job.terminal:
            if previous != WAITING:
                self.ledger.record_job(job, WAITING)
            report.waiting.append(job.id)
            return False
        if job.has_result:
            if previous is None:  # audit trail: first time this job is seen
                self.ledger.event("discovered", f"{job.status} job to archive", job_id=job.id,
                                  data={"project_id": job.project_id, "status": job.status,
                                        "expires_at": job.expires_at})
            return True
        if job.status == "expired" and previous in (INCOMPLETE, WAITING):
            self._lost(job, f"job {job.id} expired before it was archived", report)
        else:
            self.ledger.record_job(job, NOTHING)
            report.nothing_to_store.append(job.id)
            self._hook_job_done(job, NOTHING, [])
        return False

    def _lost(self, job: Job, message: str, report: RunReport) -> None:
        log.error("LOST: %s", message)
        self.ledger.record_job(job, LOST, message)
        self.ledger.event("lost", message, job_id=job.id)
        with self._lock:
            report.lost[job.id] = message
        self._hook_job_done(job, LOST, [])

    def _job(self, job: Job, art_pool: ThreadPoolExecutor, report: RunReport) -> None:
        try:
            self._job_inner(job, art_pool, report)
        except AuthError:
            self.stop.set()
            raise
        except Exception as exc:  # one job's failure must not end the pass
            log.exception("job %s failed", job.id)
            msg = exc if isinstance(exc, ArchiverError) else f"internal error: {exc!r}"
            self.ledger.record_job(job, INCOMPLETE, f"job {job.id}: {msg}")
            with self._lock:
                report.incomplete[job.id] = [str(msg)]

    def _job_inner(self, job: Job, art_pool: ThreadPoolExecutor, report: RunReport) -> None:
        self.on_progress("job", {"job": job.id})
        try:
            result = self.source.read_result(job)
        except SourceError as exc:
            if exc.status == 410:
                self._lost(job, f"job {job.id}: result expired before it was archived ({exc})",
                           report)
                return
            raise
        artifacts = [a for a in self.source.find_artifacts(job, result)
                     if not self.plugins.hook.archiver_ignore_artifact(job=job, artifact=a)]
        rel = keymod.artifact_keys(a.path for a in artifacts)
        done = self.ledger.copies(job.id)
        job_bytes = (json.dumps(job.raw, indent=2, sort_keys=True, ensure_ascii=False)
                     + "\n").encode()
        docs = [Item("job", "job.json", None, job_bytes,
                     self._keys(job, None, keymod.job_json_key(job.project_id, job.id), False)),
                Item("result", "result.json", None, result,
                     self._keys(job, None, keymod.result_json_key(job.project_id, job.id), False))]
        items = docs + [Item("artifact", a.path, a, None, self._keys(
            job, a, keymod.artifacts_prefix(job.project_id, job.id) + rel[a.path], True))
            for a in artifacts]
        results: list[ArtifactResult] = []
        for item in docs:  # records first, then the artifacts, concurrently
            results.append(self._item(job, item, done, report))
        futures = [art_pool.submit(self._item, job, item, done, report) for item in items[2:]]
        results += [f.result() for f in futures]
        problems = [f"{r.path}: {'; '.join(r.errors.values())}" for r in results if r.errors]
        if not problems and self.settings.bagit.enabled:
            # BagIt tag files last, once every object is stored and verified in every sink.
            from .compliance.bagit import write_bags
            problems = write_bags(self, job, results)
        if problems:
            self.ledger.record_job(job, INCOMPLETE, "; ".join(problems)[:4000])
            with self._lock:
                report.incomplete[job.id] = problems
            state = INCOMPLETE
        else:
            self.ledger.record_job(job, ARCHIVED)
            self.ledger.event("archived", f"{len(results)} objects in {len(self.sinks)} sinks",
                              job_id=job.id)
            with self._lock:
                report.archived.append(job.id)
            state = ARCHIVED
        self._hook_job_done(job, state, results)

    def _keys(self, job: Job, artifact: Artifact | None, default: str,
              transformed: bool) -> dict[str, str]:
        out = {}
        for name, sink in self.sinks.items():
            key = default
            if artifact is not None:
                key = self.plugins.hook.archiver_artifact_key(
                    job=job, artifact=artifact, sink=sink, default=default) or default
            if transformed:
                for t in self.common + self.per_sink.get(name, []):
                    key = t.rename(key)
            out[name] = keymod.ensure_safe_key(key)
        return out

    def _item(self, job: Job, item: Item, done: dict, report: RunReport) -> ArtifactResult:
        res = store_item(self, job, item, done)
        with self._lock:
            report.bytes_received += res.size if not res.skipped else 0
            report.objects_written += sum(1 for c in res.copies.values() if not c.existed)
        try:
            self.plugins.hook.archiver_artifact_done(job=job, artifact=item.artifact, result=res)
        except Exception:
            log.exception("an archiver_artifact_done hook failed")
        self.on_progress("artifact", {"job": job.id, "path": item.path, "ok": res.ok})
        return res

    def _hook_job_done(self, job: Job, state: str, results: list[ArtifactResult]) -> None:
        try:
            self.plugins.hook.archiver_job_done(job=job, state=state, results=results)
        except Exception:
            log.exception("an archiver_job_done hook failed")

    def chains(self, job: Job, artifact: Artifact | None, key: str):
        ctx = ArtifactContext(job, artifact, key)
        if artifact is None:  # job.json / result.json are stored byte-exact, untransformed
            return build_chains([], {n: [] for n in self.sinks}, ctx)
        return build_chains(self.common, {n: self.per_sink.get(n, []) for n in self.sinks}, ctx)

    facts_for = staticmethod(chain_facts)
    stored_for = staticmethod(stored_digests)


__all__ = ["Pipeline", "RunReport", "Interrupted", "TransformError"]
