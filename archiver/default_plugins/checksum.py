"""The ``checksum`` transform: digests of the bytes passing a point of a chain.

It never changes bytes (``feed`` returns the very chunk it was given), so where it sits
decides what it measures: before any byte-changing transform it measures the bytes as
received from the API, after the last one the bytes as stored (see
:mod:`archiver.chain`). The pipeline also uses :func:`digest_stage` directly for its
implicit SHA-256 digests.

CRC32C comes from ``google-crc32c``; its C implementation is used when the wheel ships
one (``google_crc32c.implementation == "c"``), otherwise its pure-Python fallback, which
is correct but slow (tens of MB/s). :func:`crc32c_implementation` reports which.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import Field, field_validator

from archiver.components import ArtifactContext, ComponentConfig, Stage, Transform, no_repeats
from archiver.hookspecs import hookimpl

Algorithm = Literal["sha256", "md5", "sha1", "sha512", "blake2b", "crc32c"]
ALGORITHMS: tuple[str, ...] = ("sha256", "md5", "sha1", "sha512", "blake2b", "crc32c")


def crc32c_implementation() -> str:
    """``"c"`` or ``"python"``: which google-crc32c implementation computes CRC32C."""
    import google_crc32c

    return google_crc32c.implementation


class _Crc32c:
    """hashlib-like CRC32C (Castagnoli) with a big-endian hex digest, as GCS reports it."""

    def __init__(self) -> None:
        # Imported here so that configurations without crc32c never load the extension.
        from google_crc32c import extend

        self._extend = extend
        self._crc = 0

    def update(self, chunk: bytes) -> None:
        if type(chunk) is not bytes:  # the C extension takes read-only bytes only
            chunk = bytes(chunk)
        self._crc = self._extend(self._crc, chunk)

    def hexdigest(self) -> str:
        return f"{self._crc:08x}"


def _hasher(algorithm: str):
    if algorithm == "crc32c":
        return _Crc32c()
    if algorithm in ("md5", "sha1"):
        # Integrity checks, not security: keeps working on FIPS-restricted OpenSSL builds.
        return hashlib.new(algorithm, usedforsecurity=False)
    return hashlib.new(algorithm)


class ChecksumStage(Stage):
    """Hashes every byte fed with each algorithm and passes the chunk through untouched.

    No per-chunk allocation besides what the hash functions do internally; hashlib
    releases the GIL for chunks of 2 KiB and more, so several artifacts hash in parallel.
    """

    def __init__(self, algorithms: Iterable[str] = ("sha256",)) -> None:
        self.algorithms = tuple(algorithms)
        unknown = [a for a in self.algorithms if a not in ALGORITHMS]
        if unknown or not self.algorithms:
            raise ValueError(f"checksum: unsupported algorithms {unknown or '(none)'}; "
                             f"choose from {', '.join(ALGORITHMS)}")
        self._hashers = [_hasher(a) for a in self.algorithms]
        self._updates: tuple[Callable[[bytes], None], ...] = tuple(
            h.update for h in self._hashers)
        self._size = 0
        self._facts: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> bytes:
        for update in self._updates:
            update(chunk)
        self._size += len(chunk)
        return chunk

    def finish(self) -> bytes:
        self._facts = self._compute()
        return b""

    def _compute(self) -> dict[str, Any]:
        digests = {a: h.hexdigest() for a, h in zip(self.algorithms, self._hashers, strict=True)}
        return {"digests": digests, "size": self._size}

    def facts(self) -> dict[str, Any]:
        # The chain asks more than once (once per sink); hex-encode once.
        return self._facts if self._facts is not None else self._compute()


def digest_stage(algorithms: Iterable[str] = ("sha256",)) -> Stage:
    """A pass-through stage reporting ``{"digests": {...}, "size": n}`` for ``algorithms``;
    what the pipeline uses for its implicit digests."""
    return ChecksumStage(algorithms)


class ChecksumConfig(ComponentConfig):
    algorithms: list[Algorithm] = Field(default_factory=lambda: ["sha256"], min_length=1)

    _unique = field_validator("algorithms")(no_repeats)


class ChecksumTransform(Transform):
    """``type: checksum``: records digests of the bytes at its place in the chain.

    YAML::

        transforms:
          - type: checksum
            algorithms: [sha256, md5, crc32c]
    """

    name = "checksum"
    Config = ChecksumConfig
    changes_bytes = False
    config: ChecksumConfig

    def stage(self, ctx: ArtifactContext) -> Stage:
        return ChecksumStage(self.config.algorithms)

    def digest_algorithms(self) -> tuple[str, ...]:
        return tuple(self.config.algorithms)


@hookimpl
def archiver_register_transforms(register) -> None:
    register(ChecksumTransform)
