"""The webhook receiver of ``archiver serve``: verification, dedupe, a bounded queue.

A delivery is only a *hint*: when it verifies, the job id it names is queued and the watch
loop re-reads that job through the API (and archives it if it is finished). Nothing in
a payload is ever stored, so a forged delivery that slipped through could at worst cause
one extra API read.

Verification follows the Standard Webhooks scheme (docs/plangrep-api.md, decision 6):
``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` (one or
more space-separated ``v1,<base64 HMAC-SHA256>`` over ``"{id}.{timestamp}.{body}"``).

**How the HMAC key is derived from a secret (decision).** Plangrep hands out per-job
secrets like ``wss_…`` and documents nothing more; docs/plangrep-api.md says "the secret being the
``wss_…`` string". So the key is the UTF-8 bytes of the whole secret exactly as shown,
prefix included; that is what the emulator signs with. Two tolerated alternatives, equally
safe because both need the secret: a Standard Webhooks ``whsec_<base64>`` secret uses the
base64-decoded bytes after the prefix (and only those), and for a ``wss_<rest>`` secret
whose rest is valid base64 the decoded rest is also accepted, in case Plangrep turns out
to follow Standard Webhooks' encoding with its own prefix.

Order of checks (each failure is logged with its reason and counted): body size (413),
headers (400), timestamp within the tolerance (401 stale/future), signature against the
default secret, then against the job's own secret found via the payload's job id (401;
400 if that payload is not JSON), payload shape (400), replayed ``webhook-id`` (200, ignored),
queue space (503: the sender retries later; checked first too, so that a retry storm
against a full queue costs no HMAC or JSON work). A webhook id is remembered only once its
delivery was verified *and* queued, so neither a forged delivery nor a 503 poisons a retry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from ..config import ServeSettings

log = logging.getLogger("archiver.service.webhooks")

# Job ids are used as file names in per_job_dir: keep them to a harmless alphabet.
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MSG_ID = re.compile(r"^[\x21-\x7e]{1,256}$")
_SECRET_FILE_LIMIT = 4096
_BACKPRESSURE = frozenset({"queue_full", "shutting_down"})


def key_candidates(secret: str) -> list[bytes]:
    """HMAC keys a secret may stand for (see the module docstring for the decision)."""
    secret = secret.strip()
    if secret.startswith("whsec_"):
        try:
            return [base64.b64decode(secret[6:], validate=True)]
        except (binascii.Error, ValueError):
            return [secret.encode()]
    keys = [secret.encode()]
    if secret.startswith("wss_"):
        try:
            decoded = base64.b64decode(secret[4:], validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if decoded:
            keys.append(decoded)
    return keys


def signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def _presented(header: str) -> list[bytes]:
    """The ``v1`` signatures of a ``webhook-signature`` header (others are ignored)."""
    out = []
    for part in header.split():
        version, _, value = part.partition(",")
        if version != "v1":
            continue
        try:
            out.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return out


class SecretStore:
    """Webhook secrets: a default one and/or per-job ones from a file or a directory.

    ``per_job_file`` is a YAML/JSON mapping ``job id -> secret``, re-read when it changes;
    ``per_job_dir`` holds one file per job, named by the job id, containing the secret.
    Secrets never appear in logs, errors or reprs.
    """

    def __init__(self, default: str | None = None, per_job_file: Path | None = None,
                 per_job_dir: Path | None = None):
        self._default = key_candidates(default) if default else []
        self._file, self._dir = per_job_file, per_job_dir
        self._mapping: dict[str, str] = {}
        self._stamp: tuple | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> SecretStore:
        s = settings.secrets
        return cls(s.default.get_secret_value() if s.default else None,
                   s.per_job_file, s.per_job_dir)

    def __repr__(self) -> str:
        return (f"SecretStore(default={'set' if self._default else None}, "
                f"per_job_file={self._file}, per_job_dir={self._dir})")

    @property
    def configured(self) -> bool:
        return bool(self._default or self._file or self._dir)

    @property
    def per_job(self) -> bool:
        return bool(self._file or self._dir)

    def default_keys(self) -> list[bytes]:
        return list(self._default)

    def check(self) -> None:
        """Read the per-job file once (startup): raises ValueError when it is unusable."""
        if self._file is not None and self._file.exists():
            self._load_file(strict=True)

    def _load_file(self, strict: bool = False) -> dict[str, str]:
        try:
            st = self._file.stat()
        except OSError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if stamp == self._stamp:
                return self._mapping
            try:
                data = yaml.safe_load(self._file.read_text(encoding="utf-8")) or {}
                if not isinstance(data, dict):
                    raise TypeError("must be a mapping of job id to secret")
                mapping = {str(k): str(v) for k, v in data.items() if v}
            except (OSError, TypeError, ValueError, yaml.YAMLError) as exc:
                msg = f"serve.secrets.per_job_file {self._file}: {type(exc).__name__}"
                if strict:
                    raise ValueError(msg) from None
                log.error("%s; keeping the previous per-job secrets", msg)
                return self._mapping
            self._mapping, self._stamp = mapping, stamp
            return mapping

    def job_keys(self, job_id: str) -> list[bytes]:
        if not JOB_ID.match(job_id):
            return []
        if self._file is not None:
            secret = self._load_file().get(job_id)
            if secret:
                return key_candidates(secret)
        if self._dir is not None:
            try:
                with open(self._dir / job_id, "rb") as fh:
                    raw = fh.read(_SECRET_FILE_LIMIT)
                secret = raw.decode("utf-8").strip()
            except (OSError, UnicodeDecodeError):
                return []
            if secret:
                return key_candidates(secret)
        return []


class JobQueue:
    """Job ids waiting for a re-read: bounded, ordered, each id at most once.

    ``offer`` never blocks: it answers ``"queued"``, ``"coalesced"`` (already waiting) or
    ``"full"``. ``high_water`` is the largest length ever reached (never above ``maxsize``).
    """

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: OrderedDict[str, None] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self.high_water = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def full(self) -> bool:
        with self._cond:
            return len(self._items) >= self.maxsize

    def offer(self, job_id: str) -> str:
        with self._cond:
            if job_id in self._items:
                return "coalesced"
            if len(self._items) >= self.maxsize:
                return "full"
            self._items[job_id] = None
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify()
            return "queued"

    def take(self, timeout: float | None = None) -> list[str]:
        """Every waiting id (oldest first); waits up to ``timeout`` for one to arrive."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            return items

    def close(self) -> None:
        """Wake a waiting ``take`` (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class SeenIds:
    """The last ``maxsize`` webhook ids (an LRU): a replay inside the window is ignored.

    Deliveries older than the timestamp tolerance are refused anyway, so the window only
    has to cover the deliveries of one tolerance period.
    """

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, msg_id: str) -> bool:
        if msg_id in self._ids:
            self._ids.move_to_end(msg_id)
            return True
        return False

    def add(self, msg_id: str) -> None:
        self._ids[msg_id] = None
        self._ids.move_to_end(msg_id)
        while len(self._ids) > self.maxsize:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


@dataclass
class Verdict:
    """The answer to one delivery: HTTP status, outcome and reason (for logs and metrics)."""

    status: int
    outcome: str          # "accepted" | "duplicate" | "rejected"
    reason: str = ""
    job_id: str | None = None

    def body(self) -> dict:
        out = {"status": self.outcome}
        if self.reason:
            out["reason"] = self.reason
        return out


class WebhookReceiver:
    """Verifies deliveries and queues the job ids they name (see the module docstring).

    ``handle(headers, body)`` is called by the HTTP server with the whole (size-checked)
    body and returns a :class:`Verdict`; ``on_verdict`` observes every verdict (metrics).
    """

    def __init__(self, settings: ServeSettings, queue: JobQueue, *,
                 secrets: SecretStore | None = None,
                 on_verdict: Callable[[Verdict], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.queue = queue
        self.secrets = secrets or SecretStore.from_settings(settings)
        self.seen = SeenIds(settings.dedupe_size)
        self.tolerance = settings.timestamp_tolerance
        self.insecure = settings.insecure_accept_unsigned
        self.on_verdict = on_verdict or (lambda v: None)
        self.clock = clock
        self.closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        """Shutting down: every further delivery gets 503 so that the sender retries later."""
        self.closed = True

    def reject(self, status: int, reason: str, detail: str = "",
               job_id: str | None = None) -> Verdict:
        verdict = Verdict(status, "rejected", reason, job_id)
        # backpressure is not bad input: the sender retries, so keep it out of warnings
        level = logging.INFO if reason in _BACKPRESSURE else logging.WARNING
        log.log(level, "webhook delivery rejected (%s, HTTP %d)%s", reason, status,
                f": {detail}" if detail else "",
                extra={"event": "webhook", "verdict": "rejected", "reason": reason,
                       "status": status})
        self.on_verdict(verdict)
        return verdict

    def handle(self, headers: Mapping[str, str], body: bytes) -> Verdict:
        if self.closed:
            return self.reject(503, "shutting_down")
        if self.queue.full():  # answer a retry storm cheaply, before any HMAC or JSON work
            return self.reject(503, "queue_full", f"{self.queue.maxsize} jobs waiting")
        msg_id = (headers.get("webhook-id") or "").strip()
        stamp = (headers.get("webhook-timestamp") or "").strip()
        sig = headers.get("webhook-signature") or ""
        payload: object = None
        if not self.insecure:
            missing = [n for n, v in (("webhook-id", msg_id), ("webhook-timestamp", stamp),
                                      ("webhook-signature", sig.strip())) if not v]
            if missing:
                return self.reject(400, "missing_headers", "no " + ", ".join(missing))
            if not _MSG_ID.match(msg_id):
                return self.reject(400, "missing_headers", "webhook-id is not a printable token")
            if not stamp.isdigit() or len(stamp) > 12:
                return self.reject(400, "bad_timestamp", f"webhook-timestamp {stamp[:40]!r}")
            skew = int(stamp) - self.clock()
            if skew < -self.tolerance:
                return self.reject(401, "stale_timestamp",
                                   f"{-skew:.0f}s old (tolerance {self.tolerance:.0f}s)")
            if skew > self.tolerance:
                return self.reject(401, "future_timestamp",
                                   f"{skew:.0f}s ahead (tolerance {self.tolerance:.0f}s)")
            presented = _presented(sig)
            if not presented:
                return self.reject(401, "bad_signature", "no v1 signature in webhook-signature")
            keys = self.secrets.default_keys()
            ok = self._matches(keys, presented, msg_id, stamp, body)
            if not ok and self.secrets.per_job:
                payload = self._parse(body)
                if isinstance(payload, Verdict):
                    return payload
                job_id = _job_id(payload)
                job_keys = self.secrets.job_keys(job_id) if job_id else []
                keys = keys + job_keys
                ok = self._matches(job_keys, presented, msg_id, stamp, body)
            if not ok:
                if not keys:
                    return self.reject(401, "no_secret", "no webhook secret for this delivery")
                return self.reject(401, "bad_signature", f"webhook-id {msg_id!r}")
        if payload is None:
            payload = self._parse(body)
            if isinstance(payload, Verdict):
                return payload
        job_id = _job_id(payload)
        if job_id is None:
            return self.reject(400, "bad_payload", "no valid data.job.id in the payload")
        return self._enqueue(msg_id, job_id)

    def _matches(self, keys: list[bytes], presented: list[bytes], msg_id: str, stamp: str,
                 body: bytes) -> bool:
        for key in keys:
            expected = signature(key, msg_id, stamp, body)
            if any(hmac.compare_digest(expected, p) for p in presented):
                return True
        return False

    def _parse(self, body: bytes) -> object:
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            return self.reject(400, "malformed_json", f"{type(exc).__name__}")

    def _enqueue(self, msg_id: str, job_id: str) -> Verdict:
        with self._lock:
            if msg_id and msg_id in self.seen:
                verdict = Verdict(200, "duplicate", "duplicate", job_id)
                log.info("webhook delivery %r ignored: already received (replay or retry)",
                         msg_id)
                self.on_verdict(verdict)
                return verdict
            if self.queue.offer(job_id) == "full":
                return self.reject(503, "queue_full",
                                   f"{self.queue.maxsize} jobs waiting; the sender should retry",
                                   job_id)
            if msg_id:
                self.seen.add(msg_id)
        verdict = Verdict(202, "accepted", "", job_id)
        log.info("webhook delivery %r accepted: job %s queued for a re-read", msg_id, job_id,
                 extra={"event": "webhook", "verdict": "accepted", "job_id": job_id})
        self.on_verdict(verdict)
        return verdict


def _job_id(payload: object) -> str | None:
    """``data.job.id`` of a ``job.status_changed`` payload, if it is a sane job id."""
    data = payload.get("data") if isinstance(payload, dict) else None
    job = data.get("job") if isinstance(data, dict) else None
    job_id = job.get("id") if isinstance(job, dict) else None
    return job_id if isinstance(job_id, str) and JOB_ID.match(job_id) else None
