"""Checksums S3 verifies and stores (``ChecksumAlgorithm``), computed on our side too.

A single PutObject carries the full-object checksum. A multipart upload carries one
checksum per part; S3 then stores either a *composite* checksum (the checksum of the
concatenated binary part checksums, shown as ``<base64>-<parts>``; the only kind SHA256
supports) or a *full-object* checksum (CRC32C, combinable across parts, equal to what a
single PutObject or GCS would report for the same bytes). An ETag is never a digest.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any, Mapping

#: Every algorithm whose stored value we can report back (objects written elsewhere too).
KNOWN = ("SHA256", "CRC32C", "CRC64NVME", "CRC32", "SHA1")
_MULTIPART_ETAG = re.compile(r'^"?[0-9a-fA-F]{32}-\d+"?$')


def _crc32c(data, previous: int = 0) -> int:
    from awscrt import checksums as crt  # botocore[crt]; imported on first use only

    return crt.crc32c(data, previous)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def part_checksum(algorithm: str, data: bytes | bytearray) -> bytes:
    """Binary checksum of one part (or of a whole single-PUT body)."""
    if algorithm == "SHA256":
        return hashlib.sha256(data).digest()
    if algorithm == "CRC32C":
        return _crc32c(data).to_bytes(4, "big")
    raise ValueError(f"unsupported checksum algorithm {algorithm}")


def multipart_type(algorithm: str) -> str:
    """The checksum type a multipart upload of ``algorithm`` asks S3 for."""
    return "FULL_OBJECT" if algorithm == "CRC32C" else "COMPOSITE"


class Running:
    """sha256 of every byte written, plus the running CRC32C when that is the algorithm."""

    def __init__(self, algorithm: str):
        self.algorithm = algorithm
        self.sha256 = hashlib.sha256()
        self._crc = 0

    def update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        if self.algorithm == "CRC32C":
            self._crc = _crc32c(data, self._crc)

    def full_object(self) -> str:
        """Base64 full-object checksum of everything written, in ``algorithm``."""
        if self.algorithm == "CRC32C":
            return b64(self._crc.to_bytes(4, "big"))
        return b64(self.sha256.digest())


def composite(algorithm: str, part_digests: list[bytes]) -> str:
    """The composite checksum S3 computes from the binary part checksums (no suffix)."""
    return b64(part_checksum(algorithm, b"".join(part_digests)))


def provider_checksum(resp: Mapping[str, Any], fallback_type: str | None = None) -> dict:
    """``{"algorithm", "value", "type"[, "parts"]}`` from a PutObject, Complete or
    HeadObject response, or ``{}`` if it carries no checksum.

    When the response has no ``ChecksumType`` (older S3-compatible stores, moto's
    HeadObject), the type follows from S3's rules: a ``-N`` suffix or a SHA multipart
    object means COMPOSITE, a single-part object FULL_OBJECT; else ``fallback_type``.
    """
    for algorithm in KNOWN:
        value = resp.get(f"Checksum{algorithm}")
        if value:
            break
    else:
        return {}
    value, _, parts = value.partition("-")
    kind = resp.get("ChecksumType")
    if not kind:
        multipart = bool(_MULTIPART_ETAG.match(resp.get("ETag") or ""))
        if parts or (multipart and algorithm.startswith("SHA")):
            kind = "COMPOSITE"
        elif resp.get("ETag") and not multipart:
            kind = "FULL_OBJECT"
        else:
            kind = fallback_type
    out = {"algorithm": algorithm, "value": value}
    if kind:
        out["type"] = kind
    if parts:
        out["parts"] = parts
    elif kind == "COMPOSITE" and _MULTIPART_ETAG.match(resp.get("ETag") or ""):
        out["parts"] = resp["ETag"].strip('"').rpartition("-")[2]
    return out


def sha256_from_provider(checksum: Mapping[str, str]) -> str | None:
    """Hex sha256 of the object if S3's checksum is a full-object SHA256, else None."""
    if checksum.get("algorithm") == "SHA256" and checksum.get("type") == "FULL_OBJECT":
        try:
            raw = base64.b64decode(checksum["value"], validate=True)
        except (ValueError, KeyError):
            return None
        return raw.hex() if len(raw) == 32 else None
    return None
