"""The ``local`` sink: objects as files under a root directory.

A writer (:mod:`.local_writer`) streams into a temporary file, unnamed where the
filesystem can (``O_TMPFILE``: nothing to see, nothing left by a crash) and otherwise
hidden beside the target, and publishes it on commit with a hard link (which, unlike
``rename``, never replaces a file that appeared meanwhile), so readers see either nothing
or the whole object, and two writers of one key can never overwrite each other.

Named temporary files are named ``.<basename>.%%<16 hex>.partial``. ``%%`` never occurs in a
key produced by :mod:`archiver.keys` (stored names hold no ``%``; bag roots only ``%XX``
escapes), and keys with such a segment are refused, so cleanup can never mistake an
archived artifact called ``.x.partial`` for a leftover.

Crash leftovers are known by construction: an unnamed file leaves nothing; a named
writer's temporary path is fixed when it
is opened, but the file (and any missing directory) is created only by its first write
or its commit, after the core recorded the path in the ledger as the writer's pending
token. A temporary file is forgotten by the ledger only once it is gone: an abort that
cannot remove it (a directory made read-only or immutable) raises, the token stays, and
the next run's recovery of dead writers removes the file with :meth:`LocalSink.discard`.

Repair (``archiver repair``, :meth:`LocalSink.open_repair_writer`) is the one writer that
may take a key holding other bytes: it moves the damaged file aside, never deletes it, to
``<root>/%%quarantine/<UTC time>-<6 hex>/<key>`` and then publishes the good bytes as any
writer does. ``%%`` keeps that directory apart from every key (see above).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..components import ComponentConfig, Sink, Writer
from ..errors import ConflictError, SinkError
from ..hookspecs import hookimpl
from ..model import StoredObject
from .local_paths import TEMP as _TEMP
from .local_paths import KnownDirs
from .local_paths import fsync_dir as _fsync_dir
from .local_paths import key_problem as _key_problem
from .local_paths import makedirs as _makedirs
from .local_paths import probe as _probe
from .local_paths import probe_unnamed as _probe_unnamed
from .local_paths import within as _within
from .local_writer import LocalRepairWriter, LocalWriter

READ_CHUNK = 1 << 20
QUARANTINE = "%%quarantine"  # below the root: damaged files moved aside by repair


def _sha256_file(path: str) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


class LocalSink(Sink):
    """Stores each object as a file ``<root>/<key>``.

    Keys arrive already sanitised by :mod:`archiver.keys`; they are checked again here
    (no ``..``/empty segments, no symlink inside the root leading out of it). Stored
    digests are not kept in sidecar files: :meth:`stat` re-reads the file to compute
    sha256. Writer metadata is not stored.
    """

    name = "local"
    memory_bound = "one chunk (the pipeline's chunk_size)"
    host_local = True  # pending tokens are temporary file paths on this host
    commit_buffers = False  # commit is fsync, link, directory fsync: no buffer held

    class Config(ComponentConfig):
        root: Path = Field(description="Directory holding the archive (created if missing); "
                                       "relative paths are relative to the working directory.")
        read_only: bool = Field(False, description="Make committed files read-only (0444).")
        fsync: bool = Field(True, description="fsync files and directories on commit, so a "
                                              "committed object survives a power loss.")
        temp_files: Literal["auto", "named"] = Field(
            "auto", description="auto: write into unnamed temporary files (Linux O_TMPFILE) "
            "where the filesystem supports them, so a crash leaves nothing behind and no "
            "pending record is needed; named: always hidden '.<name>.%%<hex>.partial' files "
            "beside the target, recorded in the ledger and removed by cleanup after a crash.")

    def __init__(self, config: Config, label: str = ""):
        super().__init__(config, label)
        self.root = os.path.abspath(config.root)
        # Existing directories already resolved inside the root: resolving every
        # component of every key (realpath) was a tenth of the per-object CPU.
        self._dirs = KnownDirs(self.root)
        # Unnamed temporary files: None until probed (once, at the first writer); the
        # directories whose filesystem refused them (mounts inside the root).
        self._unnamed: bool | None = None if config.temp_files == "auto" else False
        self._refused: set[str] = set()
        self._probe_lock = threading.Lock()

    # ------------------------------------------------------------------ helpers
    def _path(self, key: str) -> str:
        problem = _key_problem(key)
        if problem is None:
            path = os.path.join(self.root, *key.split("/"))
            if self._resolves_inside(path):
                return path
            problem = "it leads outside the root through a symbolic link"
        raise SinkError(f"sink {self.label!r}: refusing key {key!r}: {problem}")

    def _resolves_inside(self, path: str) -> bool:
        """Does ``path`` lead to a place below the root (no symlink out of it)?"""
        parent = os.path.dirname(path)
        if parent not in self._dirs and not self._dirs.inside(parent):
            return False
        return not os.path.islink(path) or _within(self.root, path)

    def _error(self, action: str, key: str, exc: OSError, cls=SinkError) -> SinkError:
        where = exc.filename or self.root
        return cls(f"sink {self.label!r}: cannot {action} key {key!r} at {where}: "
                   f"{exc.strerror or exc}")

    def _check_same(self, path: str, key: str, sha256: str) -> int:
        """Size of the file at ``path`` if it holds ``sha256``; ConflictError otherwise."""
        if os.path.isdir(path):
            raise ConflictError(f"sink {self.label!r}: key {key!r} is a directory ({path}); "
                                "it was left untouched")
        size, existing = _sha256_file(path)
        if existing != sha256:
            raise ConflictError(f"sink {self.label!r}: key {key!r} already holds different "
                                f"bytes (sha256 {existing}, new {sha256}); the stored file "
                                f"{path} was left untouched")
        return size

    # ------------------------------------------------------------------ Sink API
    def unnamed_temp_files(self, directory: str) -> bool:
        """Do writers into ``directory`` use unnamed temporary files?"""
        if self._unnamed is None:
            with self._probe_lock:
                if self._unnamed is None:
                    # None again when the root cannot be made or probed: asked again later
                    # (the writer's own first write reports what is wrong).
                    try:
                        _makedirs(self.root)
                    except OSError:
                        return False
                    self._unnamed = _probe_unnamed(self.root)
        return bool(self._unnamed) and directory not in self._refused

    def refuse_unnamed(self, directory: str) -> None:
        """``directory``'s filesystem refused an unnamed file: named ones from now on."""
        self._refused.add(directory)

    def open_writer(self, key: str, metadata: dict[str, str] | None = None) -> Writer:
        return LocalWriter(self, key, self._path(key))

    def open_repair_writer(self, key: str, metadata: dict[str, str] | None = None) -> Writer:
        """For ``archiver repair`` only: at commit a damaged file at the key is moved to
        the quarantine directory (module docstring) before the good bytes take its place."""
        return LocalRepairWriter(self, key, self._path(key))

    def quarantine_path(self, key: str) -> str:
        """Where a damaged file at ``key`` is kept when repair replaces it (new each call)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        return os.path.join(self.root, QUARANTINE, stamp, *key.split("/"))

    def stat(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                return None
            size, sha256 = _sha256_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._error("stat", key, exc) from exc
        return StoredObject(sink=self.label, key=key, size=size, digests={"sha256": sha256},
                            location=path)

    @contextmanager
    def open_read(self, key: str) -> Iterator[Iterator[bytes]]:
        path = self._path(key)
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by the with below)
        except FileNotFoundError as exc:
            raise SinkError(f"sink {self.label!r}: no object at key {key!r} ({path})") from exc
        except OSError as exc:
            raise self._error("read", key, exc) from exc
        with f:
            yield self._chunks(f, key)

    def _chunks(self, f, key: str) -> Iterator[bytes]:
        try:
            while chunk := f.read(READ_CHUNK):
                yield chunk
        except OSError as exc:
            raise self._error("read", key, exc) from exc

    def describe(self, key: str) -> str:
        return self._path(key)

    def discard(self, pending: str) -> None:
        directory, name = os.path.split(pending or "")
        if not (os.path.isabs(pending or "") and _TEMP.fullmatch(name)
                and _within(self.root, directory)):
            raise SinkError(f"sink {self.label!r}: refusing to discard {pending!r}: not a "
                            f"temporary file of this sink below {self.root}")
        try:
            os.unlink(pending)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SinkError(f"sink {self.label!r}: cannot remove temporary file {pending}: "
                            f"{exc.strerror}") from exc

    def preflight(self) -> None:
        try:
            _makedirs(self.root)
            _probe(self.root)
        except OSError as exc:
            raise SinkError(f"sink {self.label!r}: root {self.root} is not a writable "
                            f"directory: {exc.strerror or exc}") from exc

    def cleanup(self, older_than: float) -> list[str]:
        return [f"{self.label}: removed {path}" for path in self._remove_strays("", older_than)]

    def cleanup_partials(self, prefix: str = "", older_than: float = 0.0) -> int:
        """Remove temporary files of crashed writers below ``root/prefix`` whose last
        change is at least ``older_than`` seconds old; return how many were removed.

        With the default ``0`` this also removes the files of writers still running in
        another process, so only use it when no run is in progress.
        """
        return len(self._remove_strays(prefix, older_than))

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Committed keys below ``prefix`` (temporary files left out)."""
        for dirpath, name in self._files(prefix):
            if not _TEMP.fullmatch(name):
                rel = os.path.relpath(os.path.join(dirpath, name), self.root)
                yield rel.replace(os.sep, "/")

    def retention(self, key: str) -> dict | None:
        if self.config.read_only:
            return {"mode": "read-only file (0444); no enforced retention"}
        return None

    def _files(self, prefix: str) -> Iterator[tuple[str, str]]:
        prefix = prefix.strip("/")
        top = self._path(prefix) if prefix else self.root
        if not os.path.isdir(top):
            return
        for dirpath, _dirs, files in os.walk(top, onerror=self._list_failed):  # no symlinks
            for name in files:
                yield dirpath, name

    def _list_failed(self, exc: OSError) -> None:
        raise SinkError(f"sink {self.label!r}: cannot list {exc.filename}: "
                        f"{exc.strerror}") from exc

    def _remove_strays(self, prefix: str, older_than: float) -> list[str]:
        cutoff = time.time() - older_than
        removed = []
        for dirpath, name in self._files(prefix):
            if not _TEMP.fullmatch(name):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_mtime <= cutoff:
                    os.unlink(path)
                    removed.append(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._list_failed(exc)
        return removed


@hookimpl
def archiver_register_sinks(register):
    register(LocalSink)
