"""Service tests: an emulator with project p1 and an in-process Service factory."""

from __future__ import annotations

import pytest
from service_helpers import ServiceFactory

from archiver.testing.emulator import Emulator


@pytest.fixture
def emu():
    with Emulator() as e:
        e.add_project(project_id="p1", name="P1")
        yield e


@pytest.fixture
def make_service(emu, tmp_path):
    factory = ServiceFactory(emu, tmp_path)
    yield factory
    factory.close_all()
