"""Helpers shared by the S3 plugin's tests (a module name of its own, unlike conftest)."""

from __future__ import annotations

from moto.server import ThreadedMotoServer

MiB = 1 << 20
REGION = "us-east-1"


def start_moto() -> tuple[ThreadedMotoServer, str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def uploads(s3, bucket: str) -> list[dict]:
    """Open multipart uploads in ``bucket``."""
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads") or []
