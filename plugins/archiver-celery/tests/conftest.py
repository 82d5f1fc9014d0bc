"""Fixtures of the Celery tests: an emulator, a PostgreSQL schema, a broker, a fleet."""

from __future__ import annotations

import pytest
from fleet import Fleet, drop_pg_schema, fresh_pg_schema, make_broker

from archiver.testing.emulator import Emulator


@pytest.fixture
def emu():
    with Emulator() as e:
        yield e


@pytest.fixture
def ledger_url():
    name, url = fresh_pg_schema()
    yield url
    drop_pg_schema(name)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request):
    b = make_broker(request.param)
    yield b
    b.cleanup()


@pytest.fixture
def make_fleet(emu, tmp_path, broker, ledger_url):
    made: list[Fleet] = []

    def make(**kw) -> Fleet:
        f = Fleet(emu, tmp_path, broker, ledger_url, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop_all()
