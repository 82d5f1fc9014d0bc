"""Helpers of the PostgreSQL tests (imported by conftest.py and the tests): the server's
URL, URLs with a search_path, and stopping / starting the local cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg

ADMIN_URL = os.environ.get("ARCHIVER_TEST_POSTGRES_URL",
                           "postgresql://postgres@127.0.0.1:5432/test")
HOW = ("start PostgreSQL on 127.0.0.1:5432 or set ARCHIVER_TEST_POSTGRES_URL "
       "(e.g. postgresql://user@host:5432/db)")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def with_options(url: str, search_path: str) -> str:
    """``url`` whose sessions use ``search_path`` (libpq's ``options`` parameter)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={search_path}', safe='')}"


def cluster() -> tuple[str, str] | None:
    """(version, "main") of the local cluster when the test server is it and this machine
    can stop and start it (pg_ctlcluster); None otherwise."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return None
    parts = urlsplit(ADMIN_URL)
    if parts.hostname not in (None, "127.0.0.1", "localhost", "::1") \
            or (parts.port or 5432) != 5432:
        return None  # a server elsewhere: not ours to restart
    versions = sorted((v for v in os.listdir("/etc/postgresql") if v.isdigit()), key=int)
    return (versions[-1], "main") if versions else None


def pg_ctl(action: str, *extra: str) -> None:
    version, name = cluster()
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action,
                    *extra], check=True, capture_output=True, timeout=120)


def wait_until_up(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(ADMIN_URL, connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
