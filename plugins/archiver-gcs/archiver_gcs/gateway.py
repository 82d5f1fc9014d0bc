"""The bucket as the ``gcs`` sink sees it: every GCS request of the sink and its writer.

:class:`GCSGateway` holds the per-thread clients and authorized sessions (created on
first use, so building a sink does no I/O), maps keys to object names, and carries out
what follows an upload: verifying the new object against our digests, comparing a key
that was already taken with the bytes we meant to store, recording ``sha256`` and
applying retention and holds in one conditional PATCH, and deleting a generation we
created that failed. So ``sink.py`` is only the :class:`~archiver.components.Sink`
contract, ``writer.py`` only the upload protocol and ``preflight.py`` only the checks.

Every SDK or transport failure leaves here as :class:`~archiver.errors.SinkError` naming
the sink and the object, worded by :func:`~archiver_gcs.client.api_error` (no credential,
no session id).

Nothing is taken on trust after that PATCH: the object is read back (GET) and must hold
the configured retention (mode, a retain-until no earlier than ours) and holds. What is
missing or shorter is patched once more and read back again; if GCS still reports less,
the commit fails naming what was wanted and what GCS holds (the object keeps its
``sha256``, so the next attempt finds it, compares it and tries again). Every field read
from a reply is checked: a reply without ``generation`` or ``size`` is a
:class:`~archiver_gcs.client.RetryableSinkError`, never a KeyError.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

from archiver.cancel import mount_cancellable
from archiver.errors import ConflictError, SinkError
from archiver.keys import join_prefix
from archiver.model import StoredObject

from .client import (
    RetryableSinkError,
    api_error,
    blob_facts,
    google_errors,
    load_credentials,
    make_client,
    make_session,
    resource,
    status_of,
)
from .config import GCSConfig
from .session import cancel_session

# The sink's logger: these are the sink's messages, and log filters name that logger.
log = logging.getLogger("archiver_gcs.sink")
READ_CHUNK = 4 << 20
MAX_NAME_BYTES = 1024  # GCS object name limit
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


class GCSGateway:
    """One sink's bucket and prefix, and the GCS operations on them (module docstring).

    Clients are created lazily, one per thread (the SDK's HTTP session is not meant to be
    shared between threads).
    """

    def __init__(self, config: GCSConfig, label: str):
        self.config, self.label = config, label
        self._lock = threading.Lock()
        self._local = threading.local()
        self._credentials = None
        self._opened: list[Any] = []  # clients and sessions to close

    # ------------------------------------------------------------------ clients
    def client(self):
        """This thread's ``google.cloud.storage.Client``."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = make_client(self.config, self._creds())
            # its AuthorizedSession (a requests session): a stop cuts its requests in
            # flight and google's retries give up (archiver.cancel)
            mount_cancellable(client._http)
            self._local.client = client
            with self._lock:
                self._opened.append(client)
        return client

    def http(self):
        """This thread's authorized ``requests`` session (resumable chunk uploads)."""
        session = getattr(self._local, "http", None)
        if session is None:
            session = make_session(self._creds())
            mount_cancellable(session)  # a stop cuts a stalled chunk PUT (archiver.cancel)
            self._local.http = session
            with self._lock:
                self._opened.append(session)
        return session

    def _creds(self):
        with self._lock:
            if self._credentials is None:
                self._credentials = load_credentials(self.config, self.label)
            return self._credentials

    def bucket(self):
        return self.client().bucket(self.config.bucket)

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for thing in opened:
            try:
                thing.close()
            except Exception:  # noqa: BLE001 - closing must not hide the run's outcome
                log.debug("sink %s: closing %r failed", self.label, type(thing).__name__)
        self._local = threading.local()

    # ------------------------------------------------------------------ names
    def prefix(self) -> str:
        return join_prefix(self.config.prefix, "")

    def object_name(self, key: str) -> str:
        """The GCS object name of ``key``: prefix + key (keys come from archiver.keys)."""
        problem = None
        if not isinstance(key, str) or not key:
            problem = "the key is empty"
        elif key.startswith("/") or any(s in ("", ".", "..") for s in key.split("/")):
            problem = "the key has a leading '/' or an empty, '.' or '..' segment"
        elif any(c in key for c in "\r\n\x00"):
            problem = "the key contains CR, LF or NUL"
        name = join_prefix(self.config.prefix, key) if problem is None else ""
        if problem is None and len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            problem = f"the object name is longer than {MAX_NAME_BYTES} bytes"
        if problem:
            raise SinkError(f"sink {self.label}: refusing key {key!r}: {problem}")
        return name

    def describe(self, key: str) -> str:
        return f"gs://{self.config.bucket}/{join_prefix(self.config.prefix, key)}"

    def _where(self, key: str) -> str:
        return f"sink {self.label}: {self.describe(key)}"

    # ------------------------------------------------------------------ objects
    def new_blob(self, name: str, metadata: dict[str, str], sha256: str | None):
        """A Blob to upload: metadata, storage class and KMS key as configured."""
        blob = self.bucket().blob(name, kms_key_name=self.config.kms_key_name)
        meta = {**metadata, "sha256": sha256} if sha256 else dict(metadata)
        if meta:
            blob.metadata = meta
        if self.config.storage_class:
            blob.storage_class = self.config.storage_class
        return blob

    def get_blob(self, name: str):
        """The object named ``name`` (its current generation), or None."""
        try:
            blob = self.bucket().get_blob(name)
        except google_errors() as exc:
            raise SinkError(f"sink {self.label}: reading gs://{self.config.bucket}/{name}: "
                            f"{api_error(exc)}") from None
        if blob is not None:
            self._complete(name[len(self.prefix()):], resource(blob), "the object")
        return blob

    def stored(self, key: str, props: dict, digests: dict[str, str],
               existed: bool) -> StoredObject:
        """The StoredObject of an object resource, with what GCS reported about it."""
        checksum, extra = blob_facts(props)
        return StoredObject(sink=self.label, key=key, size=int(props.get("size") or 0),
                            digests=digests, provider_checksum=checksum,
                            location=self.describe(key), existed=existed, extra=extra)

    @contextmanager
    def stream(self, key: str) -> Iterator[Iterator[bytes]]:
        """The bytes stored at ``key``, in chunks; SinkError when there is no object."""
        blob = self.get_blob(self.object_name(key))
        if blob is None:
            raise SinkError(f"{self._where(key)}: no such object")
        with self._reader(key, blob) as chunks:
            yield chunks

    @contextmanager
    def _reader(self, key: str, blob) -> Iterator[Iterator[bytes]]:
        """Chunks of the blob's generation (pinned: a replaced object cannot mix in)."""
        if not blob.size:
            yield iter(())
            return
        try:
            reader = blob.open("rb", chunk_size=READ_CHUNK, raw_download=True)
        except google_errors() as exc:
            raise SinkError(f"{self._where(key)}: {api_error(exc)}") from None

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    data = reader.read(READ_CHUNK)
                except google_errors() as exc:
                    raise SinkError(f"{self._where(key)}: reading failed: "
                                    f"{api_error(exc)}") from None
                if not data:
                    return
                yield data

        try:
            yield chunks()
        finally:
            reader.close()

    def keys(self, prefix: str) -> Iterator[str]:
        """Sink-relative keys of the objects below ``prefix``."""
        base = self.prefix()
        try:
            for blob in self.client().list_blobs(self.config.bucket, prefix=base + prefix):
                yield blob.name[len(base):]
        except google_errors() as exc:
            raise SinkError(f"sink {self.label}: listing gs://{self.config.bucket}/"
                            f"{base + prefix}: {api_error(exc)}") from None

    # ------------------------------------------------------------------ after an upload
    def settle_new(self, key: str, props: dict, digests: dict[str, str], size: int,
                   crc32c: str, md5: str | None) -> StoredObject:
        """Verify an object we just created against our digests, then finish its commit."""
        sha256 = digests["sha256"]
        self._complete(key, props, "the upload")
        problems = []
        if str(props.get("size")) != str(size):
            problems.append(f"size {props.get('size')} != {size}")
        if props.get("crc32c") != crc32c:
            problems.append(f"crc32c {props.get('crc32c')} != {crc32c}")
        if md5 and props.get("md5Hash") and props["md5Hash"] != md5:
            problems.append(f"md5 {props['md5Hash']} != {md5}")
        if problems:
            gone = self._delete(props, "the upload failed verification")
            raise SinkError(f"{self._where(key)}: GCS holds other bytes than were sent "
                            f"({'; '.join(problems)}); {gone}")
        wanted = self.wanted()
        if self.config.compliance or (props.get("metadata") or {}).get("sha256") != sha256:
            props = self._finish(key, props, sha256, created=True, wanted=wanted)
        props = self.confirm_compliance(key, props, wanted)
        return self.stored(key, props, dict(digests), existed=False)

    def settle_existing(self, key: str, digests: dict[str, str], size: int,
                        blob=None) -> StoredObject:
        """GCS refused to create ``key``: identical bytes are success, others a conflict."""
        sha256 = digests["sha256"]
        name = self.object_name(key)
        blob = blob if blob is not None else self.get_blob(name)
        if blob is None:
            raise SinkError(f"{self._where(key)}: GCS reported the key as taken but it is gone "
                            "now; the next attempt will store it")
        props = resource(blob)
        self._complete(key, props, "the object's metadata")
        theirs = (props.get("metadata") or {}).get("sha256")
        unfinished = theirs is None
        if unfinished and str(props.get("size")) == str(size):
            theirs = self._hash_stored(key, blob)
        if theirs != sha256:
            raise ConflictError(
                f"sink {self.label}: key {key!r} already holds different bytes at "
                f"{self.describe(key)} (stored: {props.get('size')} bytes, sha256 "
                f"{theirs or 'not recorded'}; new: {size} bytes, sha256 {sha256}); "
                "the stored object was left untouched")
        wanted = self.wanted(created=props.get("timeCreated"))
        if unfinished:
            log.info("%s: completing an interrupted commit (sha256 metadata was missing)",
                     self._where(key))
            props = self._finish(key, props, sha256, created=False, wanted=wanted)
        days = self.config.retention is not None and self.config.retention.retain_days
        props = self.confirm_compliance(key, props, wanted,
                                        slack=EXISTING_SLACK if days else _SECOND)
        return self.stored(key, props, dict(digests), existed=True)

    def _complete(self, key: str, props: dict, what: str) -> None:
        """``props`` has the fields GCS always sends, else RetryableSinkError (nothing is
        deleted: without a generation we cannot name what we would delete)."""
        if not isinstance(props, dict):  # the SDK hands on a non-JSON body as bytes
            missing = ["object resource at all"]
        else:
            missing = [f for f in ("name", "generation", "size") if props.get(f) in (None, "")]
        if missing:
            raise RetryableSinkError(
                f"{self._where(key)}: GCS's reply for {what} has no {', '.join(missing)} "
                "(cut short by the network?); nothing is counted as stored, the next "
                "attempt finds and compares whatever was stored")

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

    def _finish(self, key: str, props: dict, sha256: str, created: bool,
                wanted: Compliance | None = None) -> dict:
        """Record sha256 and apply retention/holds (only after the bytes were verified)."""
        blob = self.bucket().blob(props["name"])
        blob.metadata = {**(props.get("metadata") or {}), "sha256": sha256}
        if wanted is not None:
            if wanted.temporary_hold:
                blob.temporary_hold = True
            if wanted.event_based_hold:
                blob.event_based_hold = True
            if wanted.mode:
                blob.retention.mode = wanted.mode
                blob.retention.retain_until_time = wanted.until
        try:
            metageneration = props.get("metageneration")  # fake-gcs-server may omit it
            blob.patch(if_generation_match=int(props["generation"]),
                       if_metageneration_match=int(metageneration) if metageneration else None)
            self._complete(key, resource(blob), "the PATCH")
            return resource(blob)
        except google_errors() as exc:
            if status_of(exc) == 412:  # changed meanwhile: fine if a twin writer finished it
                again = self.get_blob(props["name"])
                if again is not None and (again.metadata or {}).get("sha256") == sha256:
                    return resource(again)
            what = "record sha256" + (" and apply retention/holds" if wanted else "")
            outcome = (self._delete(props, "its commit could not be completed") if created
                       else "the object was left as it is")
            raise SinkError(f"{self._where(key)}: could not {what}: {api_error(exc)}; "
                            f"{outcome}") from None

    def _delete(self, props: dict, why: str) -> str:
        """Delete the generation we created; returns what happened, for the error message."""
        blob = self.bucket().blob(props["name"])
        try:
            blob.delete(if_generation_match=int(props["generation"]))
        except google_errors() as exc:
            log.error("sink %s: gs://%s/%s: %s and could not be deleted: %s", self.label,
                      self.config.bucket, props["name"], why, api_error(exc))
            return f"deleting it failed too ({api_error(exc)})"
        return "the object was deleted, the next run stores it again"

    def _hash_stored(self, key: str, blob) -> str:
        digest = hashlib.sha256()
        with self._reader(key, blob) as chunks:
            for chunk in chunks:
                digest.update(chunk)
        return digest.hexdigest()

    # ------------------------------------------------------------------ sessions
    def cancel_session(self, url: str, where: str) -> None:
        """Cancel the resumable session at ``url``, a URL read back from the ledger."""
        self._check_session_url(url)
        cancel_session(self.http(), url, where)

    def _check_session_url(self, url: str) -> None:
        """Only ever send our credentials to our endpoint and bucket (the ledger is data)."""
        parts, expected = urlsplit(url), urlsplit(self.client().api_endpoint)
        path_ok = parts.path == f"/upload/storage/v1/b/{self.config.bucket}/o"
        if ((parts.scheme, parts.netloc) != (expected.scheme, expected.netloc) or not path_ok
                or "upload_id" not in parse_qs(parts.query)):
            raise SinkError(f"sink {self.label}: refusing to discard a session at "
                            f"{parts.scheme}://{parts.netloc}{parts.path}: not an upload "
                            f"session of gs://{self.config.bucket} on {expected.netloc}")
