"""The local sink's writers: one object streamed into a temporary file and published at
its key on commit.

Two kinds of temporary file (the sink's ``temp_files`` option):

- **unnamed** (``auto``, where the filesystem can: Linux ``O_TMPFILE`` on ext4, XFS,
  btrfs, tmpfs): the bytes go into a file that has no name until commit links it at the
  key (``linkat`` through ``/proc/self/fd``). Nothing is visible while it is written,
  and a crash or a kill leaves nothing behind: the kernel frees a file that has no name
  when its last descriptor closes. Nothing needs recording for crash recovery, so
  ``pending`` stays None and the core writes no pending record (for small objects that
  record was a ledger transaction per object: about a tenth of the run's CPU).
- **named** (``named``, and wherever the unnamed kind is refused): a hidden
  ``.<basename>.%%<16 hex>.partial`` beside the target, recorded by the core as the
  writer's ``pending`` token before it exists, removed by :meth:`LocalSink.discard` after
  a crash.

Either way commit publishes with a hard link, which, unlike ``rename``, never replaces a
file that appeared meanwhile, so readers see either nothing or the whole object, and two
writers of one key can never overwrite each other.

A directory whose filesystem refuses ``O_TMPFILE`` (another filesystem mounted inside
the root) is found at the first write there: the writer turns named, names its file in
``pending`` and keeps that first chunk in memory (within the one-chunk bound) until the
core has recorded the name; the file is created by the next write or the commit. Later
writers in that directory are named from the start.
"""

from __future__ import annotations

import errno
import os

from ..components import Writer
from ..errors import ConflictError, SinkError
from ..model import StoredObject
from .local_paths import NO_TMPFILE, O_TMPFILE
from .local_paths import fsync_dir as _fsync_dir
from .local_paths import link_unnamed as _link_unnamed
from .local_paths import makedirs as _makedirs
from .local_paths import not_a_directory as _not_a_directory
from .local_paths import temp_name as _temp_name

# errno values of link() on filesystems without hard links (FAT, some FUSE/SMB mounts).
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


class LocalWriter(Writer):
    """Writes into an unnamed temporary file (``pending`` None) or into ``pending`` (a
    named one beside the target) until commit.

    A named ``pending`` is known as soon as the writer exists, but neither the file nor
    its directories are created before the first :meth:`write` (or :meth:`commit`): the
    core records the token first (:class:`archiver.tracked.TrackedWriter`), so nothing
    can exist at the sink that the ledger does not know about. :meth:`abort` succeeds
    only once the temporary file is gone; while a named one cannot be removed, it raises
    and the recorded token stays for :meth:`LocalSink.discard`.
    """

    def __init__(self, sink, key: str, path: str):
        self._sink, self.key, self._path = sink, key, path
        self._fd: int | None = None
        self._dirfd: int | None = None  # the target directory, while an unnamed file links
        self._made = False  # the named temporary file exists (as far as this writer knows)
        self._created: list[str] = []
        self._state = "open"
        self._held: bytes | None = None  # a chunk kept until the named file may exist
        self.size = 0
        directory, base = os.path.split(path)
        self._unnamed = sink.unnamed_temp_files(directory)
        self.pending = None if self._unnamed else os.path.join(directory, _temp_name(base))
        blocker = None if directory in sink._dirs else _not_a_directory(directory)
        if blocker is not None:
            raise sink._error("create", key, OSError(errno.ENOTDIR, "Not a directory",
                                                     blocker))

    def _open(self) -> bool:
        """Create the directories and the temporary file, on first use. False: the
        directory refused an unnamed file and nothing was created; the writer is named
        now (``pending`` is set) and the caller must let the core record it first."""
        if self._fd is not None or self._made:
            return True
        directory = os.path.dirname(self._path)
        if self._unnamed:
            target, flags = directory, os.O_WRONLY | O_TMPFILE
        else:
            target, flags = self.pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            try:  # the directory usually exists: no stat of each of its parents first
                self._fd = os.open(target, flags, 0o666)
            except FileNotFoundError:
                self._created = _makedirs(directory)
                self._fd = os.open(target, flags, 0o666)
                self._sink._dirs.remember(directory)
        except OSError as exc:
            if self._unnamed and exc.errno in NO_TMPFILE:
                self._sink.refuse_unnamed(directory)
                self._unnamed = False
                self.pending = os.path.join(directory, _temp_name(os.path.basename(self._path)))
                return False
            raise self._fail(exc, "create") from exc
        self._made = not self._unnamed
        return True

    def __del__(self):
        # Dropped without commit or abort: free the descriptor but keep a named file,
        # which the recorded pending token lets discard() remove (as after a crash); an
        # unnamed one is freed by the kernel with its descriptor.
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass

    def _refuse(self, action: str) -> SinkError:
        return SinkError(f"sink {self._sink.label!r}: cannot {action} key {self.key!r}: "
                         f"the writer is already {self._state}")

    def _drop(self) -> None:
        """Close and remove the temporary file; OSError when a named one cannot be
        removed (the file, and so the pending token, stay)."""
        self._held = None
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        if self._made:
            try:
                os.unlink(self.pending)
            except FileNotFoundError:
                pass
            self._made = False

    def _quietly_drop(self) -> None:
        try:
            self._drop()
        except OSError:
            pass  # abort() tries again; until it succeeds the pending token stays recorded

    def _fail(self, exc: OSError, action: str) -> SinkError:
        self._state = "failed"
        self._quietly_drop()
        return self._sink._error(action, self.key, exc)

    def _put(self, chunk) -> None:
        view = memoryview(chunk).cast("B")
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            raise self._fail(exc, "write") from exc

    def _ready(self) -> None:
        """The temporary file exists (a chunk held back from the switch to a named file
        written first)."""
        if not self._open():
            raise SinkError(f"sink {self._sink.label!r}: cannot commit key {self.key!r}: "
                            "its temporary file was not recorded yet")
        if self._held is not None:
            held, self._held = self._held, None
            self._put(held)

    def write(self, chunk: bytes) -> None:
        if self._state != "open":
            raise self._refuse("write to")
        if self._held is not None:
            self._ready()  # named now and recorded: create the file, write the held chunk
        elif not self._open():
            self._held = bytes(chunk)  # the core records ``pending`` when this returns
            self.size += len(chunk)
            return
        self._put(chunk)
        self.size += len(chunk)

    def commit(self, digests: dict[str, str]) -> StoredObject:
        if self._state != "open":
            raise self._refuse("commit")
        sha256 = (digests or {}).get("sha256")
        if not sha256:
            self._state = "failed"
            self._quietly_drop()
            raise SinkError(f"sink {self._sink.label!r}: cannot commit key {self.key!r} "
                            "without a sha256 digest")
        if self.pending is None and not self._open():
            # An empty object in a directory that just refused unnamed files: the core
            # has not seen the name yet, so the file cannot be created in this call.
            self._state = "failed"
            raise SinkError(f"sink {self._sink.label!r}: cannot commit key {self.key!r}: "
                            f"{os.path.dirname(self._path)} refuses unnamed temporary "
                            "files; the next attempt uses a named one")
        config = self._sink.config
        try:
            self._ready()
            if config.fsync:
                os.fsync(self._fd)
            if config.read_only:
                os.fchmod(self._fd, 0o444)
            if not self._unnamed:
                os.close(self._fd)
                self._fd = None
            existed, size = self._publish(sha256)
            if config.fsync:
                if self._dirfd is not None:
                    os.fsync(self._dirfd)
                else:
                    _fsync_dir(os.path.dirname(self._path))
                for created in self._created:
                    _fsync_dir(os.path.dirname(created))
        except ConflictError:
            self._state = "failed"
            self._quietly_drop()
            raise
        except OSError as exc:
            raise self._fail(exc, "commit") from exc
        finally:
            if self._dirfd is not None:
                os.close(self._dirfd)
                self._dirfd = None
        self._drop()  # an unnamed file's descriptor (linked, or freed if it existed)
        self._state = "committed"
        return StoredObject(sink=self._sink.label, key=self.key, size=size,
                            digests=dict(digests), location=self._path, existed=existed)

    def _link(self) -> None:
        """Give the temporary file the key's name (FileExistsError if it is taken)."""
        if self._unnamed:
            # The directory's descriptor is kept for commit's directory fsync.
            directory, base = os.path.split(self._path)
            if self._dirfd is None:
                self._dirfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            _link_unnamed(self._fd, self._dirfd, base)
        else:
            os.link(self.pending, self._path)

    def _publish(self, sha256: str) -> tuple[bool, int]:
        """Make the temporary file visible at the key without ever replacing a file;
        return (existed, size)."""
        try:
            self._link()
        except FileExistsError:
            size = self._sink._check_same(self._path, self.key, sha256)
            self._unlink_temp()
            return True, size
        except OSError as exc:
            if exc.errno not in NO_HARD_LINKS or self._unnamed:
                raise
            # No hard links here: rename cannot refuse an existing target, so check
            # first; a writer racing between check and rename may still be replaced.
            if os.path.lexists(self._path):
                size = self._sink._check_same(self._path, self.key, sha256)
                self._unlink_temp()
                return True, size
            os.rename(self.pending, self._path)
            self._made = False
            return False, self.size
        self._unlink_temp()
        return False, self.size

    def _unlink_temp(self) -> None:
        if self._made:
            os.unlink(self.pending)
            self._made = False

    def abort(self) -> None:
        """Remove the temporary file; idempotent, also after a failed write or commit
        (whose own clean-up may have failed: it is tried again here). Raises SinkError
        while a named file cannot be removed, so the caller keeps its pending record."""
        if self._state == "committed":
            return  # never removes a committed object
        if self._state == "open":
            self._state = "aborted"
        try:
            self._drop()
        except OSError as exc:
            raise SinkError(f"sink {self._sink.label!r}: cannot remove temporary file "
                            f"{self.pending} of key {self.key!r}: {exc.strerror}") from exc


class LocalRepairWriter(LocalWriter):
    """A writer that replaces a damaged file: the file is renamed into the quarantine
    (atomic, keeps its bytes and mode), then the temporary file is linked at the key as
    usual; a file that appeared at the key in between is compared again (same bytes: it
    is kept, other bytes: ConflictError), never replaced."""

    replaced: str | None = None

    def _publish(self, sha256: str) -> tuple[bool, int]:
        try:
            return super()._publish(sha256)
        except ConflictError:
            if os.path.isdir(self._path):
                raise  # a directory at the key is not a damaged object
        aside = self._sink.quarantine_path(self.key)
        created = _makedirs(os.path.dirname(aside))
        os.rename(self._path, aside)
        self.replaced = aside
        if self._sink.config.fsync:
            _fsync_dir(os.path.dirname(aside))
            for directory in created:
                _fsync_dir(os.path.dirname(directory))
        return super()._publish(sha256)

    def commit(self, digests: dict[str, str]) -> StoredObject:
        stored = super().commit(digests)
        if self.replaced:
            stored.extra["replaced"] = {"kept_at": self.replaced}
        return stored
