"""A real PostgreSQL for the plugin's tests: a fresh schema per test.

The server is ``$ARCHIVER_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Without one the tests skip, saying how to
run them; with ``CI=true`` a missing server is a failure, not a skip (CI must run them).

Each test that asks for ``pg_url`` gets a schema of its own (``archiver_t_<hex>``, made
the ledger's through ``options=-csearch_path=...`` in the URL) that is dropped after the
test; ``ledger_url`` is the same, migrated.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from pg_testing import ADMIN_URL, HOW, cluster, in_ci, pg_ctl, wait_until_up, with_options


@pytest.fixture(scope="session")
def pg_admin() -> str:
    """The server's URL, once it answers (skip, or fail under CI, when it does not)."""
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=5, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        message = f"PostgreSQL is not reachable ({' '.join(str(exc).split())[:200]}): {HOW}"
        if in_ci():
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
