"""Every request the sink makes to its container, with errors worded for operators.

The SDK client is created on first use (:mod:`archiver_azure.client`). Methods raise
:class:`~archiver.errors.SinkError` (``RetryableSinkError`` when the service could not
be reached) naming the sink, the key and the blob URL, never a credential.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import urlsplit

from archiver.errors import ConflictError, SinkError
from archiver.keys import join_prefix
from archiver.model import StoredObject

from . import client as az
from .client import RetryableSinkError, Secrets
from .config import MAX_NAME_CHARS, MAX_NAME_SEGMENTS, SHA256_METADATA
from .immutability import Wanted, confirm_immutability, found_immutability

if TYPE_CHECKING:
    from .config import AzureSinkConfig

log = logging.getLogger("archiver_azure.store")
READ_CHUNK = 4 << 20
#: Delete only blobs last modified before this: every committed blob was modified later,
#: and a blob with only uncommitted blocks "does not exist" for conditional headers, so
#: the delete can remove staged blocks but never a committed blob.
NEVER = datetime(2000, 1, 1, tzinfo=timezone.utc)


def b64(raw: bytes) -> str:
    import base64
    return base64.b64encode(raw).decode()


class AzureStore:
    """The sink's container: names, requests, and what the service reported."""

    def __init__(self, config: "AzureSinkConfig", label: str):
        self.config, self.label = config, label
        self.container = config.container
        self.prefix = join_prefix(config.prefix, "").rstrip("/")  # "a", "a/", "/a//": "a"
        self.secrets = Secrets(config)
        self._client = None
        self._lock = threading.Lock()
        self.account = self._account_hint()

    def _account_hint(self) -> str:
        """The account host (for pending tokens and describe), without any I/O."""
        if self.config.account_url:
            parts = urlsplit(self.config.account_url)
            return f"{parts.netloc}{parts.path}"
        fields = dict(p.split("=", 1) for p in
                      self.config.connection_string.get_secret_value().split(";") if "=" in p)
        endpoint = fields.get("BlobEndpoint")
        if endpoint:
            parts = urlsplit(endpoint)
            return f"{parts.netloc}{parts.path}".rstrip("/")
        return f"{fields.get('AccountName', '?')}.blob.{fields.get('EndpointSuffix', 'core.windows.net')}"

    @property
    def client(self):
        """The SDK's ContainerClient (created on first use)."""
        with self._lock:
            if self._client is None:
                self._client = az.container_client(self.config)
            return self._client

    def close(self) -> None:
        with self._lock:
            c, self._client = self._client, None
        if c is not None:
            c.close()

    # ------------------------------------------------------------------ names
    def full_name(self, key: str) -> str:
        name = f"{self.prefix}/{key}" if self.prefix else key
        units = len(name.encode("utf-16-le")) // 2
        if units > MAX_NAME_CHARS or name.count("/") + 1 > MAX_NAME_SEGMENTS:
            raise SinkError(f"sink {self.label!r}: key {key!r}: the blob name is over Azure's "
                            f"limits ({units} characters, {name.count('/') + 1} path "
                            f"segments; at most {MAX_NAME_CHARS} and {MAX_NAME_SEGMENTS}); "
                            "nothing was stored")
        return name

    def describe(self, key: str) -> str:
        name = f"{self.prefix}/{key}" if self.prefix else key
        return f"azure://{self.account}/{self.container}/{name}"

    def where(self, key: str) -> str:
        return f"sink {self.label!r}: key {key!r} ({self.describe(key)})"

    def error(self, action: str, exc: BaseException, key: str | None = None,
              needs: str = "") -> SinkError:
        where = self.where(key) if key is not None else \
            f"sink {self.label!r}: container {self.container!r} at {self.account}"
        kind = RetryableSinkError if az.is_transport(exc) else SinkError
        return kind(f"{where}: {action} failed: {az.describe(exc, self.secrets, needs)}")

    def blob(self, name: str):
        return self.client.get_blob_client(name)

    # ------------------------------------------------------------------ reading
    def head(self, name: str, key: str):
        """The blob's properties, or None when there is no committed blob."""
        try:
            return self.blob(name).get_blob_properties()
        except Exception as exc:
            if az.status_of(exc) == 404 and az.code_of(exc) != "ContainerNotFound":
                return None
            raise self.error("Get Blob Properties", exc, key, "read ('r')") from None

    @contextmanager
    def stream(self, key: str) -> Iterator[Iterator[bytes]]:
        name = self.full_name(key)
        props = self.head(name, key)
        if props is None:
            raise SinkError(f"{self.where(key)}: no such object")
        from azure.core import MatchConditions
        try:  # pinned to the ETag read: a replaced blob cannot mix in
            downloader = self.blob(name).download_blob(
                etag=props.etag, match_condition=MatchConditions.IfNotModified)
        except Exception as exc:
            raise self.error("Get Blob", exc, key, "read ('r')") from None

        def chunks() -> Iterator[bytes]:
            try:
                yield from downloader.chunks()
            except Exception as exc:
                raise self.error("reading the blob", exc, key) from None
        yield chunks()

    def stored(self, key: str, props, digests: dict[str, str], existed: bool,
               verified_by: str) -> StoredObject:
        md5 = props.content_settings.content_md5
        checksum = {"algorithm": "MD5", "value": b64(bytes(md5)), "type": "FULL_OBJECT",
                    "verified_by": verified_by} if md5 else {}
        extra: dict[str, Any] = {"container": self.container, "etag": props.etag,
                                 "version_id": props.version_id,
                                 "access_tier": props.blob_tier,
                                 **found_immutability(props)}
        return StoredObject(sink=self.label, key=key, size=props.size, digests=dict(digests),
                            provider_checksum=checksum, location=self.describe(key),
                            existed=existed, extra={k: v for k, v in extra.items() if v})

    def sha256_of(self, props) -> str | None:
        value = str((props.metadata or {}).get(SHA256_METADATA, "")).lower()
        return value if len(value) == 64 else None

    def hash_stored(self, key: str) -> str:
        digest = hashlib.sha256()
        with self.stream(key) as chunks:
            for chunk in chunks:
                digest.update(chunk)
        return digest.hexdigest()

    def keys(self, prefix: str) -> Iterator[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        try:
            for name in self.client.list_blob_names(name_starts_with=start + prefix):
                yield name[len(start):]
        except Exception as exc:
            raise self.error("List Blobs", exc, None, "list ('l')") from None

    # ------------------------------------------------------------------ writing
    def wanted_immutability(self) -> Wanted | None:
        imm = self.config.immutability
        return None if imm is None else Wanted(imm.mode, imm.until(), imm.legal_hold)

    def _write_options(self, md5: bytes, sha256: str, metadata: dict[str, str],
                       wanted: Wanted | None) -> dict[str, Any]:
        blob, cfg = az.sdk(), self.config
        from azure.core import MatchConditions
        options: dict[str, Any] = {
            "metadata": {**cfg.metadata, **metadata, SHA256_METADATA: sha256},
            "content_settings": blob.ContentSettings(content_md5=bytearray(md5)),
            "match_condition": MatchConditions.IfMissing,  # If-None-Match: *
        }
        if cfg.access_tier:
            options["standard_blob_tier"] = blob.StandardBlobTier(cfg.access_tier)
        if wanted is not None:  # sent with the bytes: the version is immutable at birth
            options["immutability_policy"] = blob.ImmutabilityPolicy(
                expiry_time=wanted.until, policy_mode=wanted.mode)
            if wanted.legal_hold:
                options["legal_hold"] = True
        return options

    def stage_block(self, name: str, block_id: str, data: bytes, md5: bytes) -> None:
        """Put Block with the block's Content-MD5 (the service refuses a mismatch)."""
        try:
            self.blob(name).stage_block(block_id, data, length=len(data),
                                        headers={"Content-MD5": b64(md5)})
        except Exception as exc:
            raise self.error("Put Block", exc, self._key(name), "write ('w')") from None

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1:] if self.prefix else name

    def put_new(self, key: str, name: str, body: bytes, md5: bytes, sha256: str,
                metadata: dict[str, str], wanted: Wanted | None) -> dict | None:
        """One Put Blob with If-None-Match: *; None when the name is taken."""
        options = self._write_options(md5, sha256, metadata, wanted)
        options.pop("match_condition")  # upload_blob(overwrite=False) sends If-None-Match: *
        try:
            return self.blob(name).upload_blob(body, length=len(body), overwrite=False,
                                               validate_content=True, **options)
        except Exception as exc:
            if _taken(exc):
                return None
            raise self.error("Put Blob", exc, key, "write ('w')") from None

    def commit_new(self, key: str, name: str, block_ids: list[str], md5: bytes, sha256: str,
                   metadata: dict[str, str], wanted: Wanted | None) -> dict | None:
        """Put Block List with If-None-Match: *; None when the name is taken."""
        blob = az.sdk()
        options = self._write_options(md5, sha256, metadata, wanted)
        try:
            return self.blob(name).commit_block_list(
                [blob.BlobBlock(block_id=i) for i in block_ids], validate_content=True,
                **options)
        except Exception as exc:
            if _taken(exc):
                return None
            raise self.error("Put Block List", exc, key, "write ('w')") from None

    def confirm(self, key: str, name: str, digests: dict[str, str], md5: bytes, size: int,
                wanted: Wanted | None, verified_by: str) -> StoredObject:
        """Read the new blob back: size and MD5 as sent, immutability in force."""
        props = self.head(name, key)
        if props is None:
            raise RetryableSinkError(f"{self.where(key)}: the blob vanished right after "
                                     "its commit")
        stored_md5 = props.content_settings.content_md5
        if props.size != size or (stored_md5 and bytes(stored_md5) != md5):
            raise SinkError(f"{self.where(key)}: the service reports {props.size} bytes, MD5 "
                            f"{b64(bytes(stored_md5 or b''))}; sent {size} bytes, MD5 "
                            f"{b64(md5)}")
        props = confirm_immutability(self, key, name, props, wanted)
        return self.stored(key, props, digests, existed=False, verified_by=verified_by)

    def match_existing(self, key: str, name: str, sha256: str, size: int,
                       digests: dict[str, str]) -> StoredObject:
        """The name is taken: same bytes = existed=True, other bytes = ConflictError."""
        props = self.head(name, key)
        if props is None:  # deleted between our commit and this read
            raise RetryableSinkError(f"{self.where(key)}: the name was taken but the blob "
                                     "is gone; the next attempt stores it")
        theirs = self.sha256_of(props)
        if theirs is None and props.size == size:  # written by something else: hash it
            theirs = self.hash_stored(key)
        if theirs != sha256:
            raise ConflictError(
                f"sink {self.label!r}: key {key!r} already holds different bytes at "
                f"{self.describe(key)} (stored: {props.size} bytes, sha256 "
                f"{theirs or 'not recorded'}; new: {size} bytes, sha256 {sha256}); the "
                "stored blob was left untouched")
        wanted = self.wanted_immutability()
        if wanted is not None and props.creation_time:  # counted from its creation
            wanted = wanted.since(props.creation_time, self.config.immutability)
        props = confirm_immutability(self, key, name, props, wanted, existing=True)
        return self.stored(key, props, digests, existed=True, verified_by="found")

    # ------------------------------------------------------------------ removing
    def remove_uncommitted(self, name: str, where: str) -> str:
        """Delete the blob ``name`` only if it has no committed content (its staged blocks
        go with it). Returns what happened; RetryableSinkError when unreachable."""
        try:
            self.blob(name).delete_blob(if_unmodified_since=NEVER)
            return "removed"
        except Exception as exc:
            status = az.status_of(exc)
            if status == 404:
                return "nothing staged"
            if status == 412:  # a committed blob is there: its staged blocks expire (7 days)
                return "committed blob kept; staged blocks expire within 7 days"
            if status == 403:
                log.warning("%s: cannot delete staged blocks (%s); they are invisible and "
                            "expire within 7 days", where, az.describe(exc, self.secrets))
                return "no delete permission; staged blocks expire within 7 days"
            raise self.error("Delete Blob (staged blocks)", exc, self._key(name),
                             "delete ('d')") from None


def _taken(exc: BaseException) -> bool:
    """Put Blob / Put Block List refused because the name holds a committed blob."""
    return az.status_of(exc) in (409, 412) and az.code_of(exc) in (
        "BlobAlreadyExists", "ConditionNotMet", "")
