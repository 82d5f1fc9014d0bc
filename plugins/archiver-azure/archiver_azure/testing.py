"""Azurite (the Azure Storage emulator) on 127.0.0.1, for this plugin's tests and yours.

:func:`azurite_server` starts ``azurite-blob`` from the npm install ``.ci/run`` makes
(``npm ci --prefix plugins/archiver-azure/azurite``) or from ``$AZURITE_BLOB`` / ``PATH``,
on a free port with a temporary ``--location``, and stops it on exit. It yields an
:class:`Azurite` with the well-known development account (a public, documented key: not
a secret) and helpers to build connection strings.

``--skipApiVersionCheck``: azure-storage-blob sends a newer ``x-ms-version`` than Azurite
may know. ``--loose``: Azurite ignores headers it does not implement instead of refusing
the request (what it cannot show is listed in the plugin README).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

#: Azurite's built-in development account (published by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
       "KBHBeksoGMGw==")
INSTALL_HINT = ("Azurite is not installed: run 'npm ci --prefix plugins/archiver-azure/azurite' "
                "(needs node >= 18), or set AZURITE_BLOB to an azurite-blob executable")

_BUNDLED = Path(__file__).resolve().parent.parent / "azurite" / "node_modules" / ".bin" / \
    "azurite-blob"


def azurite_binary() -> Path | None:
    """The azurite-blob executable: $AZURITE_BLOB, the plugin's npm install, or PATH."""
    env = os.environ.get("AZURITE_BLOB")
    if env:
        return Path(env) if Path(env).exists() else None
    if _BUNDLED.exists() and shutil.which("node"):
        return _BUNDLED
    found = shutil.which("azurite-blob")
    return Path(found) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Azurite:
    """A running Azurite blob service; ``stop()``/``start()`` simulate an outage."""

    port: int
    location: str
    proc: subprocess.Popen | None = None
    account: str = ACCOUNT
    key: str = KEY

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account}"

    def connection_string(self, key: str | None = None) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account};"
                f"AccountKey={key or self.key};BlobEndpoint={self.account_url};")

    def start(self, timeout: float = 30.0) -> None:
        binary = azurite_binary()
        if binary is None:
            raise RuntimeError(INSTALL_HINT)
        cmd = [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
               "--location", self.location, "--silent", "--skipApiVersionCheck", "--loose"]
        setpriv = shutil.which("setpriv")  # the kernel stops the server if pytest dies
        if setpriv:
            cmd = [setpriv, "--pdeathsig", "TERM", *cmd]
        log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                log.seek(0)
                raise RuntimeError("azurite exited: " + log.read().decode(errors="replace"))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"azurite did not start within {timeout} s")
            time.sleep(0.05)

    def stop(self, grace: float = 1.0) -> None:
        """Stop the server; ``grace`` seconds to save its data (an outage test restarts
        it on the same ``location``), then it is killed."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGINT)  # Azurite shuts down slowly: give it
        try:                              # a second, then kill it
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def azurite_server(timeout: float = 30.0) -> Iterator[Azurite]:
    """A started Azurite on 127.0.0.1 (free port, temporary data); stopped on exit.
    RuntimeError (saying how to install it) when Azurite is not available."""
    with tempfile.TemporaryDirectory(prefix="azurite-") as location:
        server = Azurite(port=free_port(), location=location)
        server.start(timeout)
        try:
            yield server
        finally:
            server.stop()
