"""Running ``archiver`` as users do: a real subprocess (or a pseudo-terminal), a real
emulator over HTTP, configs written to a temporary directory."""

from __future__ import annotations

import os
import pty
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

from archiver.testing.configs import basic_config


def archiver(*args, key: str | None = None, cwd=None, env: dict | None = None,
             drop: tuple[str, ...] = (), timeout: float = 120,
             **kw) -> subprocess.CompletedProcess:
    """``python -m archiver ARGS``; ``key``: $PLANGREP_API_KEY; ``drop``: variables to
    remove from the environment."""
    full = {k: v for k, v in os.environ.items() if k not in drop}
    full.pop("ARCHIVER_CONFIG", None)
    full.pop("ARCHIVER_LOG_FORMAT", None)
    if key is not None:
        full["PLANGREP_API_KEY"] = key
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "archiver", *map(str, args)],
                          capture_output=True, text=True, env=full, cwd=cwd,
                          timeout=timeout, **kw)


def write_config(emu, tmp_path: Path, name: str = "archiver.yaml", **kw) -> Path:
    path = tmp_path / name
    path.write_text(basic_config(emu, tmp_path, **kw))
    return path


def in_terminal(*args, key: str | None = None, cwd=None, columns: int = 120,
                timeout: float = 60) -> tuple[int, str]:
    """``python -m archiver ARGS`` with stdin, stdout and stderr on a pseudo-terminal of
    ``columns`` columns: (exit code, everything it wrote, escape sequences included)."""
    import fcntl
    import termios
    env = {k: v for k, v in os.environ.items() if k not in ("ARCHIVER_CONFIG",
                                                            "ARCHIVER_LOG_FORMAT")}
    env.update({"COLUMNS": str(columns), "LINES": "40", "TERM": "xterm-256color"})
    env.pop("NO_COLOR", None)
    if key is not None:
        env["PLANGREP_API_KEY"] = key
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "archiver", *map(str, args)],
                            stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                            close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")
