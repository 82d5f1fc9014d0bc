"""Test helpers shipped with archiver (the Plangrep API emulator lives in ``emulator``)."""
