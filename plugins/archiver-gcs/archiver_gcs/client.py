"""Credentials, clients and error messages: the only module that knows about google-auth.

google-cloud-storage is imported lazily so that ``import archiver_gcs`` (and the core's
plugin discovery) stays cheap and fails with an install hint when the SDK is missing.
Nothing here ever formats a credential: errors name the sink, the bucket and at most the
*path* of a credentials file.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from archiver.errors import SinkError

from .config import GCSConfig

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

INSTALL_HINT = "pip install -e plugins/archiver-gcs  (distribution 'archiver-gcs')"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# The same scopes google.cloud.storage.Client asks for by default.
SCOPES = ("https://www.googleapis.com/auth/devstorage.full_control",
          "https://www.googleapis.com/auth/devstorage.read_only",
          "https://www.googleapis.com/auth/devstorage.read_write")
_UPLOAD_ID = re.compile(r"(upload_id=)[^&\s'\"]+")


class RetryableSinkError(SinkError):
    """A failure another attempt may not meet: GCS's reply lacked a field it always
    sends (cut short by the network). ``retryable`` is True; the core counts the copy as
    failed, so the job stays incomplete and the next run tries again (an object already
    stored is then found and compared, not sent again)."""

    retryable = True


def storage_module():
    """``google.cloud.storage``, or a SinkError with the install hint."""
    try:
        from google.cloud import storage
    except ImportError as exc:  # pragma: no cover - the distribution depends on it
        raise SinkError(f"the gcs sink needs google-cloud-storage ({exc.name} is missing); "
                        f"install it with: {INSTALL_HINT}") from None
    return storage


def emulator_host() -> str | None:
    """``STORAGE_EMULATOR_HOST`` as google-cloud-storage reads it (it includes the scheme)."""
    return os.environ.get(EMULATOR_ENV) or None


def redact(text: str) -> str:
    """``text`` with resumable-session ids hidden: a session URL lets anyone upload to it."""
    return _UPLOAD_ID.sub(r"\1<redacted>", text)


def load_credentials(config: GCSConfig, label: str) -> Credentials:
    """The credentials the sink authenticates with.

    ``credentials_file`` if given (service-account key, authorized user or external
    account / workload identity federation), else Application Default Credentials. With
    ``STORAGE_EMULATOR_HOST`` set, requests go to the emulator with anonymous credentials,
    as google-cloud-storage does; a configured ``credentials_file`` is still loaded so that
    a broken file is reported the same way in tests and in production.
    """
    storage_module()  # google-auth comes with it; fail with the install hint otherwise
    import google.auth
    from google.auth import exceptions as auth_exc
    from google.auth.credentials import AnonymousCredentials

    creds = None
    if config.credentials_file is not None:
        creds = _from_file(config.credentials_file, label)
    if emulator_host():
        return AnonymousCredentials()
    if creds is not None:
        return creds
    try:
        creds, _ = google.auth.default(scopes=SCOPES)
    except auth_exc.DefaultCredentialsError:
        raise SinkError(f"sink {label}: no Google credentials found: set credentials_file, "
                        "or configure Application Default Credentials (gcloud auth "
                        "application-default login, GOOGLE_APPLICATION_CREDENTIALS, or a "
                        "service account attached to the machine)") from None
    return creds


def _from_file(path, label: str) -> Credentials:
    """Credentials from a JSON file, with the loader for its declared ``type``."""
    import json

    where = f"sink {label}: credentials_file {str(path)!r}"
    if not path.is_file():
        raise SinkError(f"{where} does not exist or is not a file")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        kind = info.get("type") if isinstance(info, dict) else None
        if kind == "service_account":
            from google.oauth2 import service_account

            return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
        if kind == "authorized_user":
            from google.oauth2 import credentials

            return credentials.Credentials.from_authorized_user_info(info, scopes=SCOPES)
        if kind == "external_account":
            source = info.get("credential_source") or {}
            if str(source.get("environment_id", "")).startswith("aws"):
                from google.auth import aws as module
            else:
                from google.auth import identity_pool as module
            return module.Credentials.from_info(info, scopes=SCOPES)
    except Exception as exc:  # noqa: BLE001 - any parser failure, reported by type only
        # A parser's message may quote the file (a private key): report the type only.
        raise SinkError(f"{where} could not be loaded ({type(exc).__name__}); expected a "
                        "service-account key, authorized-user or external-account JSON file"
                        ) from None
    raise SinkError(f"{where} has type {str(kind)[:40]!r}; supported: service_account, "
                    "authorized_user, external_account (use Application Default Credentials "
                    "for others)")


def make_client(config: GCSConfig, credentials: Credentials):
    """A ``google.cloud.storage.Client`` (it honours ``STORAGE_EMULATOR_HOST`` itself)."""
    storage = storage_module()
    return storage.Client(project=config.project, credentials=credentials)


def make_session(credentials: Credentials):
    """An authorized ``requests`` session for the resumable-upload protocol."""
    from google.auth.transport.requests import AuthorizedSession

    return AuthorizedSession(credentials)


def api_error(exc: BaseException) -> str:
    """A short, credential-free description of a google-api-core / transport error."""
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None) or str(exc)
    message = redact(" ".join(str(message).split()))
    if len(message) > 300:
        message = message[:300] + "..."
    return f"HTTP {code}: {message}" if isinstance(code, int) else f"{type(exc).__name__}: {message}"


def status_of(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def google_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a storage call may raise that the sink turns into SinkError."""
    import requests
    from google.api_core import exceptions as core_exc
    from google.auth import exceptions as auth_exc

    storage_module()
    from google.cloud.storage import exceptions as storage_exc

    return (core_exc.GoogleAPIError, auth_exc.GoogleAuthError, requests.RequestException,
            storage_exc.InvalidResponse, storage_exc.DataCorruption)


def resource(blob) -> dict[str, Any]:
    """The object resource GCS last returned for ``blob`` (the SDK keeps it as-is)."""
    return blob._properties


def blob_facts(props: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """``(provider_checksum, extra)`` of an object resource, as GCS reported them."""
    checksum = {k: props[f] for k, f in (("crc32c", "crc32c"), ("md5", "md5Hash"))
                if props.get(f)}
    extra: dict[str, Any] = {"checksum_encoding": "base64"}
    for name, field in (("generation", "generation"), ("metageneration", "metageneration"),
                        ("storage_class", "storageClass"), ("kms_key_name", "kmsKeyName"),
                        ("temporary_hold", "temporaryHold"),
                        ("event_based_hold", "eventBasedHold"),
                        ("retention_expiration_time", "retentionExpirationTime")):
        if props.get(field) not in (None, ""):
            extra[name] = props[field]
    retention = props.get("retention") or {}
    if retention.get("mode"):
        extra["retention"] = {"mode": retention["mode"],
                              "retain_until": retention.get("retainUntilTime")}
    return checksum, extra
