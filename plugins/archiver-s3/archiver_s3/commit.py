"""What follows a commit of the ``s3`` sink: :class:`CommitMixin`, a mixin of
:class:`~archiver_s3.gateway.S3Gateway` (it uses the gateway's client, names, reads and
:class:`~archiver_s3.objectlock.ObjectLockMixin`).

Nothing is taken on trust after a commit (:meth:`~CommitMixin.verify_stored`,
:meth:`~CommitMixin.match_existing`): HeadObject must report the size and checksum we
sent and, with ``object_lock``, the lock we asked for (confirmed and completed by
:meth:`~archiver_s3.objectlock.ObjectLockMixin.confirm_lock`). A key that was already
taken counts as stored only if it holds our bytes. A multipart object gets its sha256
as a tag: its metadata was set at CreateMultipartUpload, before its bytes were known.
"""

from __future__ import annotations

import hashlib
import logging

from archiver.errors import ConflictError, SinkError
from archiver.model import StoredObject

from . import awserrors, checksums
from .awserrors import RetryableSinkError
from .config import SHA256_TAG
from .objectlock import _SECOND, EXISTING_SLACK, Lock, _version

# The sink's logger: these are the sink's messages, and log filters name that logger.
log = logging.getLogger("archiver_s3.sink")


class CommitMixin:
    """What follows a commit of :class:`~archiver_s3.gateway.S3Gateway` (module
    docstring)."""

    def match_existing(self, key: str, sha256: str, digests: dict[str, str]) -> StoredObject:
        """The object already at ``key`` if it holds ``sha256``, else ConflictError.

        Tags are writable by anyone allowed s3:PutObjectTagging, so they are not trusted
        here: without a checksum or metadata digest the object is read and hashed, and
        then gets the ``archiver-sha256`` tag if it lacks it (a multipart commit cut
        short between CompleteMultipartUpload and tagging: the tag is there however the
        object got committed). Its Object Lock is confirmed and completed as for a new
        object, counted from its LastModified (:meth:`existing_lock`).
        """
        head = self.head(key)
        if head is None:
            raise RetryableSinkError(f"sink {self.label!r}: key {key!r} "
                                     f"({self.describe(key)}) existed a moment ago and is "
                                     "gone; retry")
        existing, source = self.stored_sha256(key, head, use_tag=False)
        if existing is None:
            h = hashlib.sha256()
            with self.stream(key) as chunks:
                for chunk in chunks:
                    h.update(chunk)
            existing, source = h.hexdigest(), "read"
        if existing != sha256:
            raise ConflictError(f"sink {self.label!r}: key {key!r} ({self.describe(key)}) "
                                f"already holds different bytes (sha256 {existing}, new "
                                f"{sha256}); the stored object was left untouched")
        if source == "read":
            self.ensure_sha256_tag(key, head, sha256)
        lock = self.config.object_lock
        head, applied = self.confirm_lock(
            key, head, self.existing_lock(key, head),
            slack=EXISTING_SLACK if lock and lock.retain_days else _SECOND)
        extra = {**self.facts(head), "sha256_source": source}
        if applied:
            extra["object_lock_applied_after_commit"] = True
        return StoredObject(sink=self.label, key=key, size=head["ContentLength"],
                            digests=dict(digests),
                            provider_checksum=checksums.provider_checksum(head),
                            location=self.describe(key), existed=True, extra=extra)

    def _put_tags(self, key: str, version: dict[str, str], tags: dict[str, str]) -> None:
        try:
            self.client.put_object_tagging(
                Bucket=self.bucket, Key=self.full_key(key),
                Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
                **version)
        except Exception as exc:  # the object is complete and verified; only stat suffers
            log.warning("sink %s: %s: could not tag the sha256 (%s); stat() will not report "
                        "it", self.label, self.describe(key), awserrors.describe(exc))

    def tag_sha256(self, key: str, version: str | None, sha256: str) -> None:
        """Record the digest of a multipart object as a tag (with the configured tags)."""
        self._put_tags(key, _version({"VersionId": version}),
                       {**self.config.tags, SHA256_TAG: sha256})

    def ensure_sha256_tag(self, key: str, head: dict, sha256: str) -> None:
        """Add the ``archiver-sha256`` tag (and configured tags it lacks) to an object whose
        bytes were just hashed to ``sha256``; tags already there are kept."""
        version = _version(head)
        try:
            resp = self.client.get_object_tagging(Bucket=self.bucket, Key=self.full_key(key),
                                                  **version)
        except Exception as exc:
            log.warning("sink %s: %s: could not read the tags (%s); the sha256 tag is not "
                        "added", self.label, self.describe(key), awserrors.describe(exc))
            return
        tags = {t["Key"]: t.get("Value", "") for t in resp.get("TagSet") or []
                if isinstance(t, dict) and t.get("Key")}
        if tags.get(SHA256_TAG) == sha256:
            return
        log.info("sink %s: %s: adding the missing %s tag", self.label, self.describe(key),
                 SHA256_TAG)
        self._put_tags(key, version, {**self.config.tags, **tags, SHA256_TAG: sha256})

    def verify_stored(self, key: str, resp: dict, digests: dict[str, str], expected: str,
                      kind: str, size: int, lock: Lock | None = None) -> StoredObject:
        """Check what S3 reports for the object just committed: its size, the checksum it
        computed against ``expected`` (ours) and the Object Lock against ``lock`` (what
        the upload asked for; see :meth:`confirm_lock`)."""
        version = _version(resp)
        head = self.head(key, **version)
        if head is None:
            raise RetryableSinkError(f"sink {self.label!r}: key {key!r} "
                                     f"({self.describe(key)}) is missing right after it was "
                                     "committed")
        checksum = checksums.provider_checksum(resp) or checksums.provider_checksum(head, kind)
        if not checksum:
            # A reply cut short lacks it just as a store that never reports checksums does:
            # ask once more before settling for none.
            again = self.head(key, **version)
            if again is not None:
                head, checksum = again, checksums.provider_checksum(again, kind)
        problems = []
        if head["ContentLength"] != size:
            problems.append(f"S3 holds {head['ContentLength']} bytes, we sent {size}")
        if not checksum:
            # Some S3-compatible stores accept but never report flexible checksums.
            log.warning("sink %s: %s: the store reports no checksum; the object is stored "
                        "but its provider checksum cannot be recorded", self.label,
                        self.describe(key))
        elif checksum.get("value") != expected:
            problems.append(f"S3's {self.config.checksum_algorithm} checksum is "
                            f"{checksum.get('value')}, ours {expected}")
        if problems:
            raise SinkError(f"sink {self.label!r}: key {key!r} ({self.describe(key)}): "
                            f"{'; '.join(problems)}")
        if checksum:
            checksum.setdefault("type", kind)
        head, applied = self.confirm_lock(key, head, lock)
        extra = self.facts(head)
        if applied:
            extra["object_lock_applied_after_commit"] = True
        return StoredObject(sink=self.label, key=key, size=size, digests=dict(digests),
                            provider_checksum=checksum, location=self.describe(key),
                            extra=extra)
