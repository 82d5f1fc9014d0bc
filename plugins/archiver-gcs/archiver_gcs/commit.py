"""Finishing a commit after the ``gcs`` sink's upload: :class:`CommitMixin`, a mixin of
:class:`~archiver_gcs.gateway.GCSGateway` (it uses the gateway's clients, names, reads and
:class:`~archiver_gcs.retention.RetentionMixin`).

It verifies a new object against our digests, compares a key that was already taken
with the bytes we meant to store, records ``sha256`` and applies retention and holds in
one conditional PATCH (then confirmed by reading back, :mod:`archiver_gcs.retention`),
and deletes a generation we created that failed.
"""

from __future__ import annotations

import hashlib
import logging

from archiver.errors import ConflictError, SinkError
from archiver.model import StoredObject

from .client import api_error, google_errors, resource, status_of
from .retention import _SECOND, EXISTING_SLACK, Compliance

# The sink's logger: these are the sink's messages, and log filters name that logger.
log = logging.getLogger("archiver_gcs.sink")


class CommitMixin:
    """What follows an upload of :class:`~archiver_gcs.gateway.GCSGateway` (module
    docstring)."""

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
