"""Version-level immutability (time-based retention policy, legal hold): wanted, found,
applied again when short, read back.

The policy and hold are sent with the request that creates the blob (Put Blob / Put
Block List headers ``x-ms-immutability-policy-until-date``, ``-mode`` and
``x-ms-legal-hold``), so the version is immutable from the moment it exists. After the
commit the blob's properties must show a mode at least as strong (Locked satisfies
Unlocked), an expiry no earlier than ours and the hold if asked for; what falls short is
set once more (Set Blob Immutability Policy / Set Blob Legal Hold) and read back again,
else the commit fails with a SinkError saying what was wanted and what Azure holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from archiver.errors import SinkError

from . import client as az

if TYPE_CHECKING:
    from .config import Immutability
    from .store import AzureStore

log = logging.getLogger("archiver_azure.immutability")
MODES = ("Unlocked", "Locked")  # weakest first
_SECOND = timedelta(seconds=1)
#: A blob found at the key was created by another upload whose start we do not know:
#: its policy (from retain_days) may end up to this much before creation + retain_days.
EXISTING_SLACK = timedelta(days=1)


@dataclass(frozen=True)
class Wanted:
    mode: str
    until: datetime
    legal_hold: bool = False
    slack: timedelta = _SECOND

    def since(self, created: datetime, imm: "Immutability | None") -> Wanted:
        """The same policy for a blob created at ``created`` (``retain_days`` counted
        from then, with a day of slack; a fixed ``retain_until`` unchanged)."""
        if imm is None or imm.retain_days is None:
            return self
        return Wanted(self.mode, imm.until(now=created.astimezone(timezone.utc)),
                      self.legal_hold, EXISTING_SLACK)

    def __str__(self) -> str:
        text = f"policy {self.mode} until {self.until.isoformat()}"
        return text + (", legal hold" if self.legal_hold else "")


def _policy(props) -> tuple[str | None, datetime | None]:
    policy = getattr(props, "immutability_policy", None)
    mode = getattr(policy, "policy_mode", None)
    until = getattr(policy, "expiry_time", None)
    mode = str(getattr(mode, "value", mode)) if mode else None
    if isinstance(until, datetime) and until.tzinfo is None:
        until = until.replace(tzinfo=timezone.utc)
    if mode == "Mutable":  # a removed (expired, unlocked-then-deleted) policy
        return None, None
    return mode, until if isinstance(until, datetime) else None


def found_immutability(props) -> dict[str, Any]:
    """``StoredObject.extra`` keys (archiver.ledger.chainrules.RETENTION_KEYS): the
    policy as ``retention`` ``{mode, retain_until}`` and ``legal_hold: True``."""
    mode, until = _policy(props)
    out: dict[str, Any] = {}
    if mode or until:
        out["retention"] = {"mode": mode, "retain_until": until.isoformat() if until else None}
    if getattr(props, "has_legal_hold", None) is True:
        out["legal_hold"] = True
    return out


def in_force(props) -> dict[str, Any]:
    """The shape of ``Sink.retention_in_force``."""
    mode, until = _policy(props)
    out: dict[str, Any] = {}
    if mode:
        out["mode"] = mode
    if until:
        out["retain_until"] = until.isoformat()
    if getattr(props, "has_legal_hold", None) is True:
        out["legal_hold"] = True
    return out


def describe_found(props) -> str:
    mode, until = _policy(props)
    parts = [f"policy {mode or 'none'} until {until.isoformat() if until else 'none'}"] \
        if mode or until else []
    if getattr(props, "has_legal_hold", None) is True:
        parts.append("legal hold")
    return ", ".join(parts) or "no immutability policy and no legal hold"


def shortfall(props, wanted: Wanted) -> set[str]:
    mode, until = _policy(props)
    short = set()
    if mode not in MODES or MODES.index(mode) < MODES.index(wanted.mode) or until is None \
            or until < wanted.until - wanted.slack:
        short.add("policy")
    if wanted.legal_hold and getattr(props, "has_legal_hold", None) is not True:
        short.add("legal_hold")
    return short


def confirm_immutability(store: "AzureStore", key: str, name: str, props,
                         wanted: Wanted | None, existing: bool = False):
    """``props`` once the blob carries ``wanted`` (applying what is short once more);
    SinkError naming the sink, key, wanted and found otherwise."""
    if wanted is None:
        return props
    short = shortfall(props, wanted)
    if not short:
        return props
    log.warning("%s: Azure holds %s after the %s, wanted %s; applying it again",
                store.where(key), describe_found(props),
                "lookup" if existing else "commit", wanted)
    blob, failures = store.blob(name), []
    if "policy" in short:
        mode, until = _policy(props)
        stronger = mode if mode in MODES and MODES.index(mode) > MODES.index(wanted.mode) \
            else wanted.mode
        later = until if until and until > wanted.until else wanted.until
        try:
            blob.set_immutability_policy(az.sdk().ImmutabilityPolicy(
                expiry_time=later, policy_mode=stronger))
        except Exception as exc:
            failures.append(f"Set Blob Immutability Policy: {az.describe(exc, store.secrets)}")
    if "legal_hold" in short:
        try:
            blob.set_legal_hold(True)
        except Exception as exc:
            failures.append(f"Set Blob Legal Hold: {az.describe(exc, store.secrets)}")
    again = store.head(name, key)
    if again is not None and not shortfall(again, wanted):
        return again
    why = f" ({'; '.join(failures)})" if failures else ""
    raise SinkError(f"{store.where(key)}: immutability not in force after the commit: "
                    f"wanted {wanted}, Azure holds "
                    f"{describe_found(again) if again is not None else 'no blob'}{why}; the "
                    "blob is stored but not counted as archived, the next attempt applies "
                    "it again")
