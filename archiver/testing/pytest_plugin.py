"""pytest plugin (entry point ``pytest11``) for archiver plugin authors.

Gives assertion rewriting to the contract suites and a ``plangrep_emulator`` fixture: a
started :class:`archiver.testing.emulator.Emulator` on 127.0.0.1, stopped after the test.
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("archiver.testing.sink_contract",
                               "archiver.testing.transform_contract")


@pytest.fixture
def plangrep_emulator():
    from archiver.testing.emulator import Emulator

    with Emulator() as emu:
        yield emu
