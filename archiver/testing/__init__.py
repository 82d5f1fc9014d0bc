"""Test helpers shipped with archiver (the Plangrep API emulator lives in ``emulator``).

Contract suites for plugin authors: ``sink_contract.SinkContract``,
``transform_contract.TransformContract`` and ``ledger_contract.LedgerContract`` (every
ledger backend). They import pytest, so they are not imported here:
``archiver.testing.emulator`` is used outside tests too (``archiver demo``).
"""
