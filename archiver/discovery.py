"""Which configuration file a command uses when ``-c`` is not given.

In order: ``-c FILE``; ``$ARCHIVER_CONFIG``; ``./archiver.yaml``;
``$XDG_CONFIG_HOME/archiver/archiver.yaml`` (``~/.config/archiver/archiver.yaml`` when
``XDG_CONFIG_HOME`` is unset). The first that is given (``-c``, the variable) or exists
(the two files) wins; a given path that does not exist is still used, so that the loader
says so, instead of silently falling back to another file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "ARCHIVER_CONFIG"
FILE_NAME = "archiver.yaml"


class NoConfig(Exception):
    """Nothing to use: no ``-c``, no ``$ARCHIVER_CONFIG`` and neither default file."""

    def __init__(self, searched: list[str]):
        self.searched = searched
        super().__init__("no configuration file: give -c FILE, set ARCHIVER_CONFIG, or "
                         f"create one of {', '.join(searched)}")


def candidates(env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None
               ) -> list[Path]:
    """The default files, in the order they are tried."""
    env = os.environ if env is None else env
    here = Path(cwd) if cwd is not None else Path.cwd()
    xdg = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [here / FILE_NAME, Path(xdg) / "archiver" / FILE_NAME]


def find_config(explicit: str | os.PathLike | None = None, *,
                env: Mapping[str, str] | None = None,
                cwd: str | os.PathLike | None = None) -> tuple[str, str]:
    """``(path, where it came from)``; raises :class:`NoConfig`."""
    env = os.environ if env is None else env
    if explicit is not None and str(explicit) != "":
        return str(explicit), "-c"
    if env.get(ENV_VAR):
        return env[ENV_VAR], f"${ENV_VAR}"
    files = candidates(env, cwd)
    for path in files:
        if path.is_file():
            here = path == files[0] and cwd is None
            return (FILE_NAME if here else str(path)), f"found {'./' + FILE_NAME if here else path}"
    raise NoConfig([f"./{FILE_NAME}", str(files[1])])


__all__ = ["ENV_VAR", "FILE_NAME", "NoConfig", "candidates", "find_config"]
