"""Paths below a local sink's root: which keys may become paths, the names of temporary
files, creating directories, and the directories already known to resolve inside the root.

(Split out of :mod:`.local`, which holds the sink and its writers; the rules for keys and
temporary names are described in that module's docstring.)
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat

# errno values of open(O_TMPFILE) where the filesystem (or kernel) has no unnamed files;
# old kernels read O_TMPFILE as O_DIRECTORY and answer EISDIR.
NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL})
O_TMPFILE = getattr(os, "O_TMPFILE", 0)
TEMP = re.compile(r"\..*\.%%[0-9a-f]{16}\.partial", re.DOTALL)
INSIDE_CACHE = 4096  # directories remembered as resolving inside the root
TEMP_BASE_BYTES = 200  # keeps temporary names well below NAME_MAX (255 bytes)


def temp_name(base: str) -> str:
    cut = base.encode("utf-8")[:TEMP_BASE_BYTES]
    base = cut.decode("utf-8", "ignore")
    return f".{base}.%%{secrets.token_hex(8)}.partial"


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a path below the root, or None if it can."""
    if not isinstance(key, str) or not key:
        return "the key is empty"
    if key.startswith("/"):
        return "the key is absolute"
    if "\x00" in key or "\\" in key:
        return "the key contains NUL or a backslash"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "the key is not valid Unicode"
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            return "the key has an empty, '.' or '..' segment"
        if len(segment.encode("utf-8")) > 255:
            return "a segment is longer than 255 bytes"
        if TEMP.fullmatch(segment):
            return "a segment is named like a temporary file"
    return None


def within(root: str, path: str) -> bool:
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: str) -> list[str]:
    """Create ``path`` and its missing parents; return the ones created (outermost first)."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    created = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
            created.append(directory)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
    return created


def probe(directory: str) -> None:
    """Create and remove a file in ``directory``: an unnamed one (``O_TMPFILE``) where the
    filesystem can, so that a crash leaves nothing behind; else a named temporary file."""
    if O_TMPFILE:
        try:
            os.close(os.open(directory, os.O_WRONLY | O_TMPFILE, 0o600))
            return
        except OSError as exc:
            if exc.errno not in NO_TMPFILE:
                raise
    probe = os.path.join(directory, temp_name("preflight"))
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.unlink(probe)


def probe_unnamed(root: str) -> bool | None:
    """Can writers below ``root`` use unnamed temporary files? An ``O_TMPFILE`` file is
    made in the root and linked at a temporary name through ``/proc/self/fd`` (what a
    commit does), then that name is removed. None: the root cannot be probed (yet)."""
    if not O_TMPFILE:
        return False
    try:
        fd = os.open(root, os.O_WRONLY | O_TMPFILE, 0o600)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return False if exc.errno in NO_TMPFILE else None
    name = temp_name("probe")
    try:
        dfd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            link_unnamed(fd, dfd, name)
            os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)
    except OSError:
        return False  # no /proc, or the filesystem cannot link such a file
    finally:
        os.close(fd)
    return True


def link_unnamed(fd: int, dir_fd: int, name: str) -> None:
    """Give the unnamed file open as ``fd`` the name ``name`` in the directory open as
    ``dir_fd`` (FileExistsError if it is taken). os.link calls linkat(...,
    AT_SYMLINK_FOLLOW), which links the file behind the /proc descriptor link, only when
    given a directory descriptor; plain link() would try to link the /proc link itself."""
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd)


def not_a_directory(path: str) -> str | None:
    """The closest existing ancestor of ``path`` (itself included) if it is not a
    directory, so a writer can fail at once without creating anything."""
    while True:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent
            continue
        except NotADirectoryError:
            path = os.path.dirname(path)
            continue
        except OSError:
            return None  # the writer's first write reports it
        return None if stat.S_ISDIR(st.st_mode) else path


class KnownDirs:
    """Directories below ``root`` known to exist and to resolve inside it (thread-safe:
    plain dict operations under the GIL; at ``INSIDE_CACHE`` entries it starts again)."""

    def __init__(self, root: str):
        self.root = root
        self._known: dict[str, None] = {}

    def inside(self, directory: str) -> bool:
        """Is ``directory`` (below the root) free of symlinks out of the root? Only the
        components not yet known are looked at, top down, one ``lstat`` each: the first
        missing one ends the walk (what ``mkdir`` creates below it is a real directory),
        a symlink is resolved. Resolving every component of every key (``realpath``) was
        a tenth of the per-object CPU, most of it on directories already known."""
        unknown = []
        while directory not in self._known and directory != self.root:
            unknown.append(directory)
            parent = os.path.dirname(directory)
            if parent == directory:  # not below the root: resolve it all
                return within(self.root, unknown[0])
            directory = parent
        for component in reversed(unknown):
            try:
                mode = os.lstat(component).st_mode
            except FileNotFoundError:
                return True
            except OSError:
                return within(self.root, unknown[0])  # let realpath decide, and report
            if stat.S_ISLNK(mode):
                if not within(self.root, component):
                    return False
            elif not stat.S_ISDIR(mode):
                return True  # a file in the way: the writer reports it, naming it
            self.remember(component)
        return True

    def remember(self, directory: str) -> None:
        """``directory`` exists and resolves inside the root (checked or just created)."""
        if len(self._known) >= INSIDE_CACHE:
            self._known.clear()  # atomic, unlike evicting while other threads insert
        self._known[directory] = None

    def __contains__(self, directory: str) -> bool:
        return directory in self._known
