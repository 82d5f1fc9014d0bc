"""Replacing a damaged object, for ``archiver repair`` only (:meth:`GCSSink.open_repair_writer`).

GCS never loses the damaged bytes here: repair replaces an object only in a bucket with
Object Versioning, where the upload becomes the live generation and the damaged one
stays as a noncurrent generation. Without versioning an upload would destroy it, so
repair refuses and says what an operator can do. GCS itself refuses to replace an object
under a hold or an unexpired retention; the error then names what is in force and what
an operator must do.

The upload protocol is :class:`~archiver_gcs.writer.GCSWriter`'s, unchanged; only the
precondition differs: ``ifGenerationMatch`` is the damaged generation instead of ``0``,
so the new generation is created only while the key still holds the object judged
damaged. Anything else at the key is compared as usual (same bytes: ``existed=True``;
other bytes: ConflictError, nothing replaced).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from archiver.errors import SinkError
from archiver.model import StoredObject

from .client import api_error, google_errors, resource
from .writer import GCSWriter

if TYPE_CHECKING:
    from .gateway import GCSGateway
    from .sink import GCSSink


def check_versioned(sink: GCSSink, key: str) -> None:
    """SinkError unless the bucket has Object Versioning (needs ``storage.buckets.get``)."""
    gw = sink.gateway
    try:
        versioned = gw.client().get_bucket(gw.config.bucket).versioning_enabled
    except google_errors() as exc:
        raise SinkError(f"sink {sink.label}: reading the versioning of bucket "
                        f"{gw.config.bucket}: {api_error(exc)}") from None
    if not versioned:
        raise SinkError(
            f"sink {sink.label}: {sink.describe(key)}: the bucket has no object versioning, "
            "so replacing the damaged object would destroy it; an operator must either "
            f"enable it (gcloud storage buckets update gs://{gw.config.bucket} "
            f"--versioning) or move the object aside (gcloud storage mv "
            f"{sink.describe(key)} <elsewhere>), then run archiver repair again")


def protection(props: dict) -> list[str]:
    """What keeps GCS from replacing the object (holds, retention), as words."""
    out = [words for name, words in (("temporaryHold", "temporary hold"),
                                     ("eventBasedHold", "event-based hold"))
           if props.get(name) is True]
    retention = props.get("retention") or {}
    if retention.get("mode"):
        out.append(f"retention {retention['mode']} until {retention.get('retainUntilTime')}")
    if props.get("retentionExpirationTime"):
        out.append(f"bucket retention until {props['retentionExpirationTime']}")
    return out


def _if_generation(blob, generation: int):
    """``blob`` whose uploads carry ``ifGenerationMatch=generation`` whatever the writer
    asks for (it asks for 0: create only)."""
    upload, start = blob.upload_from_file, blob.create_resumable_upload_session

    def upload_from_file(*args, if_generation_match=None, **kwargs):
        return upload(*args, if_generation_match=generation, **kwargs)

    def create_resumable_upload_session(*args, if_generation_match=None, **kwargs):
        return start(*args, if_generation_match=generation, **kwargs)

    blob.upload_from_file = upload_from_file
    blob.create_resumable_upload_session = create_resumable_upload_session
    return blob


class _ReplacingGateway:
    """The sink's gateway as a repair writer sees it: new blobs replace ``generation``,
    and that generation does not count as "an object is already there"."""

    def __init__(self, gateway: GCSGateway, generation: int):
        self._gw, self._generation = gateway, generation

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gw, name)

    def new_blob(self, name: str, metadata: dict[str, str], sha256: str | None):
        return _if_generation(self._gw.new_blob(name, metadata, sha256), self._generation)

    def get_blob(self, name: str):
        blob = self._gw.get_blob(name)
        if blob is not None and int(blob.generation or 0) == self._generation:
            return None
        return blob


class GCSRepairWriter(GCSWriter):
    """Uploads the good bytes as the live generation of a key holding a damaged object
    (``damaged``: its blob); ``StoredObject.extra["replaced"]`` names the generation that
    keeps the damaged bytes."""

    def __init__(self, sink: GCSSink, key: str, name: str, metadata: dict[str, str],
                 damaged):
        super().__init__(sink, key, name, metadata)
        self._damaged = resource(damaged)
        self._generation = int(damaged.generation)
        self._gw = _ReplacingGateway(sink.gateway, self._generation)

    def commit(self, digests: dict[str, str]) -> StoredObject:
        try:
            stored = super().commit(digests)
        except SinkError as exc:
            held = protection(self._damaged)
            if not held:
                raise
            raise SinkError(f"{exc}; the damaged object is protected ({', '.join(held)}): "
                            "GCS refuses to replace it until an operator releases the holds "
                            "or the retention has passed (or overrides an Unlocked retention)"
                            "; it was left as it is") from None
        if not stored.existed:
            stored.extra["replaced"] = {
                "generation": str(self._generation),
                "kept_at": f"{self._sink.describe(self._key)}#{self._generation}"}
        return stored
