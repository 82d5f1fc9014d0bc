"""A real PostgreSQL for the plugin's tests: a fresh schema per test.

The server is ``$ARCHIVER_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Without one the tests skip, saying how to
run them; with ``CI=true`` a missing server is a failure, not a skip (CI must run them).

Each test that asks for ``pg_url`` gets a schema of its own (``archiver_t_<hex>``, made
the ledger's through ``options=-csearch_path=...`` in the URL) that is dropped after the
test; ``ledger_url`` is the same, migrated.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

ADMIN_URL = os.environ.get("ARCHIVER_TEST_POSTGRES_URL",
                           "postgresql://postgres@127.0.0.1:5432/test")
HOW = ("start PostgreSQL on 127.0.0.1:5432 or set ARCHIVER_TEST_POSTGRES_URL "
       "(e.g. postgresql://user@host:5432/db)")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def with_options(url: str, search_path: str) -> str:
    """``url`` whose sessions use ``search_path`` (libpq's ``options`` parameter)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={search_path}', safe='')}"


@pytest.fixture(scope="session")
def pg_admin() -> str:
    """The server's URL, once it answers (skip, or fail under CI, when it does not)."""
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=5, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        message = f"PostgreSQL is not reachable ({' '.join(str(exc).split())[:200]}): {HOW}"
        if _in_ci():
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return ADMIN_URL


@pytest.fixture
def fresh_schema(pg_admin):
    """``make()`` -> (schema name, URL using it); every schema made is dropped after."""
    made: list[str] = []

    def make() -> tuple[str, str]:
        name = f"archiver_t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        made.append(name)
        return name, with_options(pg_admin, name)

    yield make
    if made:
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            for name in made:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def pg_url(fresh_schema) -> str:
    """A ledger URL on an empty schema of this test's own."""
    return fresh_schema()[1]


@pytest.fixture
def ledger_url(pg_url) -> str:
    """``pg_url``, migrated to the latest schema."""
    from archiver_postgres import schema
    with psycopg.connect(pg_url, autocommit=True) as conn:
        schema.migrate(conn, "test")
    return pg_url


# --------------------------------------------------------------------------- the server
def cluster() -> tuple[str, str] | None:
    """(version, name) of the local cluster when this machine can stop and start it."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return None
    if not ADMIN_URL.startswith(("postgresql://postgres@127.0.0.1", "postgresql://root@127.0.0.1",
                                 "postgresql://postgres@localhost")) \
            and "ARCHIVER_TEST_POSTGRES_URL" in os.environ:
        return None  # a server elsewhere: not ours to restart
    versions = sorted(os.listdir("/etc/postgresql"))
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


@pytest.fixture
def controllable(pg_admin):
    """The local cluster, restarted (and waited for) after the test whatever happened."""
    if cluster() is None:
        pytest.skip("needs a local PostgreSQL this test may restart (pg_ctlcluster and "
                    "/etc/postgresql)")
    try:
        yield cluster()
    finally:
        try:
            wait_until_up(timeout=5)
        except psycopg.Error:
            pg_ctl("start")
            wait_until_up()
