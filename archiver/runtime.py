"""The runtime: one configured archiver, opened from a config file the same way by every
command (built-in command plugins included).

It holds what the work for one job needs (source, transforms, sinks, ledger, plugins, the
keys and chains of an object) and the process-wide stop flags; it decides nothing about
which jobs to work on (:mod:`archiver.triage`) or who works on them
(:mod:`archiver.executors`, :mod:`archiver.workers`). Components are built on first use,
so commands that only read the ledger (``status``) never construct a source or a sink.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

from . import keys as keymod
from .cancel import Canceller
from .fanout import Item, StoreContext
from .progress import ENV as PROGRESS_ENV
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .components import Sink, Source, Transform
    from .config import Built, LoadedConfig
    from .ledger import Ledger, WorkerId
    from .model import Artifact, Job
    from .plugins import Plugins

log = logging.getLogger("archiver.runtime")


def load_config_file(config_file: str, *, require_env: bool = True,
                     plugins: Plugins | None = None) -> tuple[Plugins, LoadedConfig]:
    """Plugins and the validated config; raises ConfigError / PluginError (exit 2).

    ``require_env=False`` leaves an unset ``${VAR}`` as written, for commands that read
    only the ledger and need no secret (``status``, ``verify``, ``ledger status``)."""
    from .config import load_config
    from .plugins import build_plugin_manager
    plugins = plugins or build_plugin_manager()
    return plugins, load_config(config_file, plugins.registry, require_env=require_env)


def _instantiate(built: Built, **kw):
    return built.cls(built.config, **kw)


def _no_progress(kind: str, data: dict[str, Any]) -> None:
    """The default ``on_progress``: nobody is watching (no bytes events are made)."""


class Runtime:
    """Components, ledger and plugins of one config, and the stop flags of this process.

    ``stop``: abort in-flight writers now. ``draining``: start nothing new; objects being
    written finish (graceful shutdown, first step). ``cancel``: the
    :class:`~archiver.cancel.Canceller` that :meth:`request_stop` fires, cutting the
    sockets of in-flight downloads and uploads (a thread blocked in the network checks
    no flag).
    """

    def __init__(self, loaded: LoadedConfig, plugins: Plugins, ledger: Ledger, *,
                 on_progress: Callable[[str, dict[str, Any]], None] | None = None):
        self.loaded = loaded
        self.settings = loaded.settings
        self.plugins, self.ledger = plugins, ledger
        self.stop = threading.Event()
        self.draining = threading.Event()
        self.cancel = Canceller()
        self.policy = RetryPolicy(retries=self.settings.artifact_attempts - 1)
        self.on_progress = on_progress or _no_progress
        self.owns_ledger = False  # True when opened by open(): close() closes it too
        self.worker: WorkerId | None = None   # set by whoever claims jobs in this process
        self.counters_lock = threading.Lock()  # outcome counters summed by many threads

    @classmethod
    def open(cls, config_file: str, *, require_env: bool = True, create: bool = True,
             read_only: bool = False, plugins: Plugins | None = None,
             on_progress: Callable[[str, dict[str, Any]], None] | None = None,
             loaded: LoadedConfig | None = None) -> Runtime:
        """The one way to open a runtime from a config file (``loaded``: already loaded
        from it, with ``plugins``).

        Raises ConfigError / PluginError (bad configuration, exit 2), LedgerError (no
        ledger with ``create=False``, a schema newer than this code) and OSError /
        sqlite3.Error (a state_dir that cannot be created, a locked ledger)."""
        from .ledger import open_ledger
        if loaded is None or plugins is None:
            plugins, loaded = load_config_file(config_file, require_env=require_env,
                                               plugins=plugins)
        ledger = open_ledger(loaded.settings, create=create, read_only=read_only)
        rt = cls(loaded, plugins, ledger, on_progress=on_progress)
        rt.owns_ledger = True
        return rt

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ components
    @cached_property
    def source(self) -> Source:
        src_cfg = self.loaded.source.config
        fields = type(src_cfg).model_fields
        update: dict[str, Any] = {}
        if "pool_size" in fields and "pool_size" not in src_cfg.model_fields_set:
            update["pool_size"] = self.settings.concurrency * 2 + 2
        # Settings.chunk_size is the read size unless the source sets its own.
        if "chunk_size" in fields and "chunk_size" not in src_cfg.model_fields_set:
            update["chunk_size"] = int(self.settings.chunk_size)
        if update:
            src_cfg = src_cfg.model_copy(update=update)
        source = self.loaded.source.cls(src_cfg)
        limit = getattr(self.settings, "rate_limit", None)
        if limit is not None:  # one API budget for every process on the ledger (budget.py)
            from .budget import from_settings
            source.use_budget(from_settings(self.ledger, limit, f"source:{source.name}",
                                            stop=self.stop))
        return source

    @cached_property
    def sinks(self) -> dict[str, Sink]:
        return {b.label: _instantiate(b, label=b.label) for b in self.loaded.sinks}

    @cached_property
    def common(self) -> list[Transform]:
        return [_instantiate(b) for b in self.loaded.transforms]

    @cached_property
    def per_sink(self) -> dict[str, list[Transform]]:
        return {name: [_instantiate(b) for b in lst]
                for name, lst in self.loaded.sink_transforms.items()}

    @property
    def worker_id(self) -> str | None:
        return self.worker.id if self.worker is not None else None

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        """Abort now: flags for the loops, and the in-flight I/O's sockets cut."""
        self.draining.set()
        self.stop.set()
        if threading.current_thread() is threading.main_thread():
            # Possibly a signal handler, which may have interrupted a thread holding the
            # canceller's lock: cut from another thread, so the handler never waits.
            threading.Thread(target=self.cancel.cancel, name="archiver-cancel",
                             daemon=True).start()
        else:
            self.cancel.cancel()

    def request_drain(self) -> None:
        """Graceful shutdown, first step: objects being written finish, nothing new starts
        (their jobs stay incomplete and are resumed by the next run)."""
        self.draining.set()

    def preflight(self) -> None:
        for sink in self.sinks.values():
            sink.preflight()

    def close(self) -> None:
        """Close the components that were built, then the ledger if :meth:`open` opened
        it (a ledger handed to the constructor belongs to the caller)."""
        built = [self.__dict__[n] for n in ("source",) if n in self.__dict__]
        built += list(self.__dict__.get("sinks", {}).values())
        for comp in built:
            try:
                comp.close()
            except Exception:  # closing must not hide the run's outcome
                log.exception("closing %r failed", comp)
        if self.owns_ledger:
            self.ledger.close()

    # ------------------------------------------------------------------ one object
    def store_context(self, stopped: Callable[[], bool] | None = None,
                      records: Any = None) -> StoreContext:
        """The fan-out's inputs; ``stopped`` adds a stop condition (a job's lost lease);
        ``records``: the job's :class:`~archiver.jobrecords.JobRecords` (None: each
        object's records are committed before it is done)."""
        stop = self.stop
        halt = stop.is_set if stopped is None else (lambda: stop.is_set() or stopped())
        return StoreContext(self.source, self.sinks, self.common, self.per_sink, self.ledger,
                            self.policy, stopped=halt, draining=self.draining.is_set,
                            owner=self.worker_id, wait=stop.wait,
                            on_bytes=self._on_bytes if self.shows_progress else None,
                            canceller=self.cancel, downloads=self.downloads,
                            records=records)

    @cached_property
    def downloads(self) -> threading.BoundedSemaphore:
        """``concurrency`` downloads in flight in this process, for every job (the
        artifact pool has twice as many threads: the others finish objects)."""
        return threading.BoundedSemaphore(self.settings.concurrency)

    @property
    def shows_progress(self) -> bool:
        """Somebody watches the bytes in flight: a progress callback was given, and no
        parent without a display said otherwise (``ARCHIVER_PROGRESS=0``: its workers)."""
        return (self.on_progress is not _no_progress
                and os.environ.get(PROGRESS_ENV) != "0")

    def _on_bytes(self, job_id: str, path: str, done: int, total: int | None) -> None:
        self.on_progress("bytes", {"job": job_id, "path": path, "done": done, "total": total})

    def keys(self, job: Job, artifact: Artifact | None, default: str,
             transformed: bool) -> dict[str, str]:
        """Each sink's key for one object: the key hook, then the transforms' renames,
        then the one sanitiser."""
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

    def items(self, job: Job, result: bytes) -> list[Item]:
        """Every object of a job: job.json, result.json, then the artifacts the result
        references and no ``archiver_ignore_artifact`` hook drops, with their keys."""
        artifacts = [a for a in self.source.find_artifacts(job, result)
                     if not self.plugins.hook.archiver_ignore_artifact(job=job, artifact=a)]
        rel = keymod.artifact_keys(a.path for a in artifacts)
        job_bytes = (json.dumps(job.raw, indent=2, sort_keys=True, ensure_ascii=False)
                     + "\n").encode()
        prefix = keymod.artifacts_prefix(job.project_id, job.id)
        return [Item("job", "job.json", None, job_bytes,
                     self.keys(job, None, keymod.job_json_key(job.project_id, job.id), False)),
                Item("result", "result.json", None, result,
                     self.keys(job, None, keymod.result_json_key(job.project_id, job.id),
                               False)),
                *(Item("artifact", a.path, a, None,
                       self.keys(job, a, prefix + rel[a.path], True)) for a in artifacts)]

    def hook_job_done(self, job: Job, state: str, results: list) -> None:
        try:
            self.plugins.hook.archiver_job_done(job=job, state=state, results=results)
        except Exception:
            log.exception("an archiver_job_done hook failed")


__all__ = ["Runtime", "load_config_file"]
