"""Online checks of a ``gcs`` sink before any download (``archiver config check --online``)."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from archiver.errors import SinkError
from archiver.keys import join_prefix

from .client import api_error, emulator_host, google_errors, status_of
from .session import CONTENT_TYPE, cancel_session

if TYPE_CHECKING:
    from .gateway import GCSGateway

log = logging.getLogger("archiver_gcs.preflight")
PREFLIGHT_DIR = ".archiver-preflight"


def run_preflight(gw: GCSGateway) -> None:
    """Raise SinkError naming the sink unless the bucket exists and takes our writes
    (``gw`` is the sink's gateway: its clients, bucket and prefix)."""
    cfg, label = gw.config, gw.label
    where = f"gs://{cfg.bucket}"
    bucket = gw.bucket()
    props = None
    try:
        bucket.reload()
        props = dict(bucket._properties)
    except google_errors() as exc:
        code = status_of(exc)
        if code == 404:
            raise SinkError(f"sink {label}: bucket {cfg.bucket!r} does not exist ({where}); "
                            "create it or fix 'bucket'") from None
        if code != 403:
            raise SinkError(f"sink {label}: cannot read bucket {where}: {api_error(exc)}") from None
        if cfg.retention:
            raise SinkError(f"sink {label}: 'retention' is configured but the bucket's settings "
                            f"cannot be read to check it ({where}, HTTP 403: grant "
                            "storage.buckets.get)") from None
        log.info("sink %s: no storage.buckets.get on %s; checking writes only", label, where)
    if cfg.retention and props is not None:
        check_object_retention(props, label, cfg.bucket, emulated=bool(emulator_host()))
    _probe_write(gw, props)


def check_object_retention(props: dict, label: str, bucket: str, emulated: bool) -> None:
    """Object retention needs a bucket created with it enabled (it cannot be added later
    to an existing bucket through the JSON API)."""
    mode = (props.get("objectRetention") or {}).get("mode")
    if mode == "Enabled":
        return
    if emulated and "objectRetention" not in props:
        log.warning("sink %s: the storage emulator does not report object retention for "
                    "gs://%s; not checked", label, bucket)
        return
    raise SinkError(f"sink {label}: 'retention' is configured but bucket gs://{bucket} does not "
                    "have object retention enabled (objectRetention.mode is "
                    f"{mode or 'unset'}); use a bucket created with "
                    "--enable-per-object-retention, or remove 'retention'")


def _probe_write(gw: GCSGateway, props: dict | None) -> None:
    """Create and delete a zero-byte object under ``<prefix>/.archiver-preflight/``.

    In a bucket whose retention policy or default event-based hold would make that
    object undeletable, open and cancel a resumable session instead (the same
    ``storage.objects.create`` check, and nothing is ever created).
    """
    cfg, label = gw.config, gw.label
    name = join_prefix(cfg.prefix, f"{PREFLIGHT_DIR}/{uuid.uuid4().hex}")
    where = f"gs://{cfg.bucket}/{name}"
    blob = gw.new_blob(name, {"purpose": "archiver preflight"}, sha256=None)
    sticky = bool(props and (props.get("retentionPolicy") or props.get("defaultEventBasedHold")))
    try:
        if sticky:
            url = blob.create_resumable_upload_session(content_type=CONTENT_TYPE, checksum=None,
                                                       if_generation_match=0)
            cancel_session(gw.http(), url, f"sink {label}: preflight")
            return
        blob.upload_from_string(b"", content_type=CONTENT_TYPE, if_generation_match=0)
    except google_errors() as exc:
        raise SinkError(_write_problem(label, cfg.bucket, where, exc)) from None
    try:
        blob.delete(if_generation_match=blob.generation)
    except google_errors() as exc:
        raise SinkError(f"sink {label}: can create but not delete objects in gs://{cfg.bucket} "
                        f"({api_error(exc)}); storage.objects.delete is needed to remove an "
                        f"upload that fails verification; the probe {where} was left behind"
                        ) from None


def _write_problem(label: str, bucket: str, where: str, exc: BaseException) -> str:
    code = status_of(exc)
    if code == 404:
        return f"sink {label}: bucket {bucket!r} does not exist (gs://{bucket})"
    if code in (401, 403):
        return (f"sink {label}: no permission to create objects in gs://{bucket} "
                f"(storage.objects.create, and cloudkms encrypt if kms_key_name is set): "
                f"{api_error(exc)}")
    return f"sink {label}: test write of {where} failed: {api_error(exc)}"
