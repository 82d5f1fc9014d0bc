"""Meta-test (datasette style): every hook is documented and exercised by a test."""

import inspect
import re
from pathlib import Path

from archiver import hookspecs

ROOT = Path(__file__).resolve().parent.parent


def test_every_hook_has_semantics_line():
    for name in hookspecs.HOOK_NAMES:
        doc = inspect.getdoc(getattr(hookspecs, name))
        last = doc.strip().splitlines()[-1]
        assert last in ("All implementations run; return value ignored.",
                        "Stops at first non-None result."), name


def test_every_hook_is_documented():
    text = (ROOT / "docs" / "hooks.md").read_text()
    for name in hookspecs.HOOK_NAMES:
        assert re.search(rf"^## `?{name}", text, re.M), f"{name} missing from docs/hooks.md"


def test_every_hook_is_tested():
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py")
                    if p.name != "test_hookspecs.py")
    for name in hookspecs.HOOK_NAMES:
        assert name in tests, f"no test mentions {name}"
