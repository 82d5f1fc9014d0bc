"""Retention and holds of the ``gcs`` sink's objects: what an object must carry, and
confirming that GCS holds it after a commit.

:class:`Compliance` is what the config asks for; :class:`RetentionMixin` (a mixin of
:class:`~archiver_gcs.gateway.GCSGateway`, using its clients, names and reads) works out
:meth:`~RetentionMixin.wanted` for an object, reads back what GCS holds and patches what
falls short.

Nothing is taken on trust after the commit's PATCH: the object is read back (GET) and must
hold the configured retention (mode, a retain-until no earlier than ours) and holds. What
is missing or shorter is patched once more and read back again; if GCS still reports
less, the commit fails naming what was wanted and what GCS holds (the object keeps its
``sha256``, so the next attempt finds it, compares it and tries again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from archiver.errors import SinkError

from .client import RetryableSinkError, api_error, google_errors, resource

# The sink's logger: these are the sink's messages, and log filters name that logger.
log = logging.getLogger("archiver_gcs.sink")
#: Retention modes, weakest first: Locked also satisfies a wanted Unlocked.
MODES = ("Unlocked", "Locked")
#: An object found at the key (not created by this writer) holds enough retention if its
#: retain-until is no more than this before timeCreated + retain_days (the commit time
#: it was counted from is not known); with ``retain_until``, one second.
EXISTING_SLACK = timedelta(days=1)
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class Compliance:
    """The retention and holds an object must carry."""

    mode: str | None
    until: datetime | None
    temporary_hold: bool
    event_based_hold: bool

    def __str__(self) -> str:
        parts = [f"retention {self.mode} until {self.until.isoformat()}"] if self.mode else []
        parts += [name for name, on in (("temporary hold", self.temporary_hold),
                                        ("event-based hold", self.event_based_hold)) if on]
        return ", ".join(parts)


def found_compliance(props: dict) -> str:
    """What an object resource says about retention and holds, as :class:`Compliance`."""
    retention = props.get("retention") or {}
    parts = []
    if retention.get("mode") or retention.get("retainUntilTime"):
        parts.append(f"retention {retention.get('mode') or 'none'} until "
                     f"{retention.get('retainUntilTime') or 'none'}")
    parts += [name for name, field in (("temporary hold", "temporaryHold"),
                                       ("event-based hold", "eventBasedHold"))
              if props.get(field) is True]
    return ", ".join(parts) or "no retention and no holds"


def _rfc3339(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class RetentionMixin:
    """The retention and holds of :class:`~archiver_gcs.gateway.GCSGateway`'s objects
    (module docstring)."""

    def wanted(self, created: Any = None) -> Compliance | None:
        """The retention and holds an object must carry (None: none configured). For an
        object found at the key, ``created`` (its ``timeCreated``) starts ``retain_days``."""
        cfg = self.config
        if not cfg.compliance:
            return None
        until = None
        if cfg.retention:
            now = datetime.now(timezone.utc)
            start = _rfc3339(created)
            until = cfg.retention.until(now=min(start, now) if start else now)
        return Compliance(cfg.retention.mode if cfg.retention else None, until,
                          cfg.temporary_hold, cfg.event_based_hold)

    @staticmethod
    def shortfall(props: dict, wanted: Compliance, slack: timedelta = _SECOND) -> set[str]:
        """Which of ``retention``, ``temporary_hold``, ``event_based_hold`` the object
        resource shows falling short of ``wanted`` (a stronger mode or later date is fine)."""
        short = set()
        if wanted.mode:
            retention = props.get("retention") or {}
            mode, until = retention.get("mode"), _rfc3339(retention.get("retainUntilTime"))
            if mode not in MODES or MODES.index(mode) < MODES.index(wanted.mode) or \
                    until is None or (wanted.until and until < wanted.until - slack):
                short.add("retention")
        if wanted.temporary_hold and props.get("temporaryHold") is not True:
            short.add("temporary_hold")
        if wanted.event_based_hold and props.get("eventBasedHold") is not True:
            short.add("event_based_hold")
        return short

    def confirm_compliance(self, key: str, props: dict, wanted: Compliance | None, *,
                           slack: timedelta = _SECOND) -> dict:
        """The object resource as GCS holds it now (read back with GET), once it carries
        ``wanted``; what is missing or shorter is patched once more and read back again.
        SinkError naming the sink, the key, what was wanted and what GCS holds otherwise."""
        if wanted is None:
            return props
        name = props["name"]
        current = self._read_back(key, name)
        short = self.shortfall(current, wanted, slack)
        if not short:
            return current
        log.warning("%s: GCS holds %s after the commit, wanted %s; applying it again",
                    self._where(key), found_compliance(current), wanted)
        failure = ""
        blob = self.bucket().blob(name)
        if "temporary_hold" in short:
            blob.temporary_hold = True
        if "event_based_hold" in short:
            blob.event_based_hold = True
        if "retention" in short:
            retention = current.get("retention") or {}
            mode, until = wanted.mode, wanted.until
            found_mode, found_until = retention.get("mode"), _rfc3339(
                retention.get("retainUntilTime"))
            if found_mode in MODES and MODES.index(found_mode) > MODES.index(mode):
                mode = found_mode
            if found_until and until and found_until > until:
                until = found_until
            blob.retention.mode = mode
            blob.retention.retain_until_time = until
        try:
            blob.patch(if_generation_match=int(current["generation"]))
        except google_errors() as exc:
            failure = f" (PATCH: {api_error(exc)})"
        again = self._read_back(key, name)
        if not self.shortfall(again, wanted, slack):
            return again
        raise SinkError(f"{self._where(key)}: retention/holds not in force after the commit: "
                        f"wanted {wanted}, GCS holds {found_compliance(again)}{failure}; the "
                        "object is stored but not counted as archived, the next attempt "
                        "applies them again")

    def _read_back(self, key: str, name: str) -> dict:
        blob = self.get_blob(name)
        if blob is None:
            raise RetryableSinkError(f"{self._where(key)}: the object vanished right after "
                                     "its commit")
        props = resource(blob)
        self._complete(key, props, "the object read back")
        return props

    def retention_in_force(self, key: str) -> dict[str, Any]:
        """Retention and holds GCS holds for ``key`` now (``Sink.retention_in_force``)."""
        blob = self.get_blob(self.object_name(key))
        if blob is None:
            raise SinkError(f"{self._where(key)}: no such object")
        props = resource(blob)
        out: dict[str, Any] = {}
        retention = props.get("retention") or {}
        if retention.get("mode"):
            out["mode"] = retention["mode"]
        if retention.get("retainUntilTime"):
            out["retain_until"] = retention["retainUntilTime"]
        if props.get("temporaryHold") is True:
            out["temporary_hold"] = True
        if props.get("eventBasedHold") is True:
            out["event_based_hold"] = True
        return out
