"""Retention a fixity audit holds a stored copy to, and how the store's falls short.

The retention wanted is the one the sink confirmed when it stored the copy
(:func:`recorded_retention`, from the ``retention`` audit record) or, for a copy stored
without one, the configured retention counted from when it was stored
(:func:`configured_retention`); :func:`retention_shortfall` compares it with what the
store holds now (``Sink.retention_in_force``). Pure functions: the reading is
:class:`~archiver.compliance.fixity.Auditor`'s.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

#: Retention modes by strength (S3 Object Lock, GCS object retention): a stronger mode
#: satisfies a weaker one.
MODE_RANK = {"GOVERNANCE": 1, "COMPLIANCE": 2, "Unlocked": 1, "Locked": 2}
HOLDS = ("legal_hold", "temporary_hold", "event_based_hold")
#: A copy recorded without retention facts is held to the configured retention counted
#: from its ``stored_at``, less this many seconds (providers count from the upload's
#: start, which the ledger does not know).
FALLBACK_SLACK = 86400.0



def recorded_retention(data: dict[str, Any]) -> dict[str, Any]:
    """A ``retention`` audit record's facts (``StoredObject.extra`` keys, see
    ``archiver.ledger.chainrules.RETENTION_KEYS``) in the shape of ``Sink.retention``."""
    out: dict[str, Any] = {}
    nested = data.get("retention") if isinstance(data.get("retention"), dict) else {}
    mode = data.get("object_lock_mode") or nested.get("mode")
    until = data.get("object_lock_retain_until") or nested.get("retain_until")
    if mode:
        out["mode"] = mode
    if until:
        out["retain_until"] = until
    if data.get("object_lock_legal_hold") == "ON" or data.get("legal_hold") is True:
        out["legal_hold"] = True
    for hold in ("temporary_hold", "event_based_hold"):
        if data.get(hold) is True:
            out[hold] = True
    return out


def configured_retention(configured: dict[str, Any] | None,
                         stored_at: float | None) -> dict[str, Any]:
    """What ``Sink.retention`` (the retention an object written *now* receives) means for
    a copy stored at ``stored_at``: the same mode and holds, retained that much less long
    (less :data:`FALLBACK_SLACK`). For a fixed date this is lenient, never too strict."""
    if not configured:
        return {}
    out = {k: v for k, v in configured.items() if k == "mode" or (k in HOLDS and v is True)}
    until = _when(configured.get("retain_until"))
    if until is not None:
        age = max(0.0, time.time() - stored_at) if stored_at else 0.0
        out["retain_until"] = _iso(until - age - FALLBACK_SLACK)
    return out


def retention_shortfall(wanted: dict[str, Any], current: dict[str, Any],
                        now: float) -> list[str]:
    """How ``current`` (``Sink.retention_in_force``) falls short of ``wanted``. A retention
    whose wanted date has passed has run out as planned and is not checked."""
    problems = []
    until = _when(wanted.get("retain_until"))
    if until is not None and until > now:
        have = _when(current.get("retain_until"))
        mode, have_mode = wanted.get("mode"), current.get("mode")
        if have is None or not have_mode:
            problems.append("retention missing")
        else:
            if have < until - 1:
                problems.append(f"retention shortened to {_iso(have)}, wanted at least "
                                f"{_iso(until)}")
            if mode and have_mode != mode and (
                    MODE_RANK.get(have_mode, 0) < MODE_RANK.get(mode, 0)
                    or MODE_RANK.get(mode) is None):
                problems.append(f"retention mode {have_mode}, wanted {mode}")
    for hold in HOLDS:
        if wanted.get(hold) and not current.get(hold):
            problems.append(f"{hold.replace('_', ' ')} removed")
    return problems


def describe_retention(ret: dict[str, Any]) -> str:
    parts = []
    if ret.get("mode") or ret.get("retain_until"):
        parts.append(f"{ret.get('mode') or 'no mode'} until {ret.get('retain_until') or '-'}")
    parts += [hold.replace("_", " ") for hold in HOLDS if ret.get(hold)]
    return ", ".join(parts) or "none"


def _when(value: Any) -> float | None:
    """Seconds since the epoch of an ISO 8601 date (naive: UTC), or None."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()
