"""Sizes, durations, rates and times as people read them (standard library only).

Binary units throughout (KiB, MiB, GiB), as ``du -h`` and rich's progress with
``binary_units`` show them; times are ISO 8601 in UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone

_UNITS = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def size(n: float | int | None) -> str:
    """``0 B``, ``512 B``, ``1.5 KiB``, ``400 MiB``, ``2.25 GiB``."""
    if n is None:
        return "?"
    for unit, name in _UNITS:
        if abs(n) >= unit:
            value = n / unit
            text = f"{value:.1f}" if value < 100 else f"{value:.0f}"
            return text.removesuffix(".0") + f" {name}"
    return f"{int(n)} B"


def duration(seconds: float) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``2h07m``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def rate(nbytes: int, seconds: float) -> str | None:
    """``4.2 MiB/s``; None when the time is too short to say anything."""
    if seconds < 0.05 or nbytes <= 0:
        return None
    return f"{size(nbytes / seconds)}/s"


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 in UTC (``2024-05-01T12:00:00Z``); None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def parse_iso(value: object) -> float | None:
    """Unix seconds of an ISO 8601 time with a zone (``...Z`` too); None if unusable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt.timestamp() if dt.tzinfo is not None else None


__all__ = ["size", "duration", "rate", "iso", "parse_iso"]
