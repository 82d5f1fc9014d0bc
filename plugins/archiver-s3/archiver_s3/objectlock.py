"""Object Lock of the ``s3`` sink's objects: what an object must carry, and confirming
that S3 holds it after a commit.

:class:`Lock` is the lock an object must carry (mode, retain-until date, legal hold);
:class:`ObjectLockMixin` (a mixin of :class:`~archiver_s3.gateway.S3Gateway`, using its
client, names and reads) works out the lock for a new object or for one found at the key,
reads back what S3 holds and applies what falls short.

Nothing is taken on trust after a commit: HeadObject must report the mode, a retain-until
date no earlier than ours and the legal hold. What is missing or shorter is applied after
the fact (PutObjectRetention, PutObjectLegalHold) and read back again; if it still falls
short the commit fails, naming what was wanted and what S3 holds.

``_version`` and ``_utc`` read a reply's VersionId and dates. They live here because
:mod:`archiver_s3.gateway` and :mod:`archiver_s3.commit` use them too: both import this
module, and it imports neither.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from archiver.errors import SinkError

from . import awserrors
from .awserrors import RetryableSinkError

# The sink's logger: these are the sink's messages, and log filters name that logger.
log = logging.getLogger("archiver_s3.sink")

#: Object Lock modes, weakest first: COMPLIANCE also satisfies a wanted GOVERNANCE.
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
#: An object found at the key (not created by this writer) holds enough retention if its
#: retain-until is no more than this before LastModified + retain_days: the date was
#: counted from the start of its upload, which we do not know. (With ``retain_until``
#: the date is known: one second.)
EXISTING_SLACK = timedelta(days=1)
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class Lock:
    """The Object Lock an object must carry."""

    mode: str
    until: datetime
    legal_hold: bool

    def params(self) -> dict[str, Any]:
        """PutObject / CreateMultipartUpload arguments setting this lock."""
        out: dict[str, Any] = {"ObjectLockMode": self.mode,
                               "ObjectLockRetainUntilDate": self.until}
        if self.legal_hold:
            out["ObjectLockLegalHoldStatus"] = "ON"
        return out

    def __str__(self) -> str:
        return (f"mode {self.mode} until {self.until.isoformat()}"
                + (", legal hold ON" if self.legal_hold else ""))


def found_lock(head: dict) -> str:
    """What HeadObject reports about an object's lock, in the words of :class:`Lock`."""
    mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
    hold = head.get("ObjectLockLegalHoldStatus")
    parts = []
    if mode or until:
        parts.append(f"mode {mode or 'none'} until "
                     f"{until.isoformat() if isinstance(until, datetime) else until or 'none'}")
    if hold:
        parts.append(f"legal hold {hold}")
    return ", ".join(parts) or "no Object Lock"


def _version(resp: dict) -> dict[str, str]:
    vid = resp.get("VersionId")
    return {"VersionId": vid} if vid and vid != "null" else {}


def _utc(when: datetime) -> datetime:
    """``when`` in UTC (botocore parses dates in the local zone or UTC; naive means UTC)."""
    if not isinstance(when, datetime):
        raise TypeError(f"not a datetime: {when!r}")
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


class ObjectLockMixin:
    """The Object Lock of :class:`~archiver_s3.gateway.S3Gateway`'s objects (module
    docstring)."""

    def wanted_lock(self) -> Lock | None:
        """The lock an object uploaded from now on must carry (None: no ``object_lock``)."""
        lock = self.config.object_lock
        if lock is None:
            return None
        return Lock(lock.mode, lock.retain_until_datetime(), lock.legal_hold)

    def existing_lock(self, key: str, head: dict) -> Lock | None:
        """The lock an object found at ``key`` must carry: the configured mode and legal
        hold, retained until LastModified + ``retain_days`` (or ``retain_until``)."""
        lock = self.config.object_lock
        if lock is None:
            return None
        created = _utc(self.field(head, "LastModified", "HeadObject", key))
        now = datetime.now(timezone.utc)
        return Lock(lock.mode, lock.retain_until_datetime(now=min(created, now)),
                    lock.legal_hold)

    @staticmethod
    def lock_shortfall(head: dict, wanted: Lock, slack: timedelta = _SECOND) -> set[str]:
        """Which of ``mode``, ``until``, ``legal_hold`` HeadObject shows falling short of
        ``wanted`` (COMPLIANCE satisfies GOVERNANCE; a later date satisfies an earlier)."""
        short = set()
        mode = head.get("ObjectLockMode")
        if mode not in LOCK_MODES or LOCK_MODES.index(mode) < LOCK_MODES.index(wanted.mode):
            short.add("mode")
        until = head.get("ObjectLockRetainUntilDate")
        if not isinstance(until, datetime) or _utc(until) < wanted.until - slack:
            short.add("until")
        if wanted.legal_hold and head.get("ObjectLockLegalHoldStatus") != "ON":
            short.add("legal_hold")
        return short

    def confirm_lock(self, key: str, head: dict, wanted: Lock | None, *,
                     slack: timedelta = _SECOND) -> tuple[dict, bool]:
        """``(head, applied)``: HeadObject of ``key`` once its Object Lock satisfies
        ``wanted``; ``applied`` if that took PutObjectRetention / PutObjectLegalHold.

        What is missing or shorter is applied (the stronger of both modes, the later of
        both dates, legal hold ON) and read back. If S3 still reports less: SinkError
        naming the sink, the key, what was wanted and what S3 holds; the object stays
        (it cannot be deleted, and need not be: the next attempt finds it and tries again).
        """
        if wanted is None:
            return head, False
        short = self.lock_shortfall(head, wanted, slack)
        if not short:
            return head, False
        log.warning("sink %s: %s: S3 reports %s after the commit, wanted %s; applying it",
                    self.label, self.describe(key), found_lock(head), wanted)
        version, failures = _version(head), []
        if short & {"mode", "until"}:
            mode, until = wanted.mode, wanted.until
            found_mode = head.get("ObjectLockMode")
            if found_mode in LOCK_MODES and LOCK_MODES.index(found_mode) > \
                    LOCK_MODES.index(mode):
                mode = found_mode
            found_until = head.get("ObjectLockRetainUntilDate")
            if isinstance(found_until, datetime) and _utc(found_until) > until:
                until = _utc(found_until)
            try:
                self.client.put_object_retention(
                    Bucket=self.bucket, Key=self.full_key(key),
                    Retention={"Mode": mode, "RetainUntilDate": until}, **version)
            except Exception as exc:
                failures.append("PutObjectRetention: " + awserrors.describe(
                    exc, "s3:PutObjectRetention"))
        if "legal_hold" in short:
            try:
                self.client.put_object_legal_hold(
                    Bucket=self.bucket, Key=self.full_key(key), LegalHold={"Status": "ON"},
                    **version)
            except Exception as exc:
                failures.append("PutObjectLegalHold: " + awserrors.describe(
                    exc, "s3:PutObjectLegalHold"))
        again = self.head(key, **version)
        if again is None:
            raise RetryableSinkError(f"sink {self.label!r}: key {key!r} "
                                     f"({self.describe(key)}) vanished while its Object "
                                     "Lock was applied")
        if not self.lock_shortfall(again, wanted, slack):
            return again, True
        why = "; ".join(failures) or ("S3 accepted the request; HeadObject shows Object "
                                      "Lock only to callers allowed s3:GetObjectRetention "
                                      "and s3:GetObjectLegalHold")
        raise SinkError(f"sink {self.label!r}: key {key!r} ({self.describe(key)}): Object "
                        f"Lock not in force after the commit: wanted {wanted}, S3 holds "
                        f"{found_lock(again)} ({why}); the object is stored but not counted "
                        "as archived, the next attempt applies the lock again")

    def retention_in_force(self, key: str) -> dict[str, Any]:
        """The Object Lock S3 reports for ``key`` now (``Sink.retention_in_force``)."""
        head = self.head(key)
        if head is None:
            raise SinkError(f"sink {self.label!r}: no object at key {key!r} "
                            f"({self.describe(key)})")
        out: dict[str, Any] = {}
        if head.get("ObjectLockMode"):
            out["mode"] = head["ObjectLockMode"]
        until = head.get("ObjectLockRetainUntilDate")
        if isinstance(until, datetime):
            out["retain_until"] = _utc(until).isoformat()
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            out["legal_hold"] = True
        return out
