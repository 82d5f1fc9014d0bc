"""Digests of the bytes passing a point of a chain: the core's own hashing stage.

The chain (:mod:`archiver.chain`) places implicit SHA-256 stages from here, and the
built-in ``checksum`` transform wraps the same stage; the core never imports a plugin.

CRC32C comes from ``google-crc32c``; its C implementation is used when the wheel ships
one (``google_crc32c.implementation == "c"``), otherwise its pure-Python fallback, which
is correct but slow (tens of MB/s). :func:`crc32c_implementation` reports which.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any, Literal

from .components import Stage

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
