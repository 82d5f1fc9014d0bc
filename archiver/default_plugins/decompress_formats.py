"""Format detection, key suffixes and bounded-output decoders for ``decompress``.

Every decoder handles one member (gzip member, bzip2 stream, xz stream, zstd frame) and
exposes :meth:`steps`, which decompresses all of the data it is given but yields the
output in pieces of bounded size, so the caller can apply its bomb guards between
pieces instead of after a huge buffer was already allocated:

* zlib, bz2 and lzma honour ``max_length``: each piece is at most ``limit()`` bytes;
* ``zstandard``'s ``decompressobj`` has no ``max_length``, so input is handed over in
  :data:`ZSTD_PIECE` bytes; a zstd block decodes to at most 128 KiB and needs at least
  3 bytes of header plus 1 byte of payload, so one piece yields at most
  ``(ZSTD_PIECE / 4 + 1) * 128 KiB`` (about 8 MiB).

After a member ends (``eof``) ``leftover`` holds the input that follows it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

STEP = 1 << 20          # max output of one zlib/bz2/lzma call
ZSTD_PIECE = 256        # input bytes per zstd call (see module docstring)
ZSTD_WRITE_SIZE = 1 << 18

# Longest prefix needed to decide; legacy .lzma needs its 13-byte header.
DETECT_LEN = 13

MAGIC: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b"),
    ("bzip2", b"BZh"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
)

# suffix -> (format that must be enabled, replacement)
SUFFIXES: dict[str, tuple[str, str]] = {
    ".gz": ("gzip", ""), ".gzip": ("gzip", ""), ".tgz": ("gzip", ".tar"),
    ".bz2": ("bzip2", ""), ".tbz2": ("bzip2", ".tar"), ".tbz": ("bzip2", ".tar"),
    ".xz": ("xz", ""), ".txz": ("xz", ".tar"), ".lzma": ("xz", ""),
    ".zst": ("zstd", ""), ".zstd": ("zstd", ""), ".tzst": ("zstd", ".tar"),
}


def _lzma_alone(head: bytes) -> bool:
    """Whether ``head`` is a legacy ``.lzma`` (LZMA_Alone) header.

    The format has no magic bytes. Like xz's own auto-detection we accept only a header
    a real encoder writes, and are stricter still: properties byte 0x5D (lc=3, lp=0,
    pb=2, the default of every common encoder), a dictionary size of 2^n or 2^n + 2^(n-1)
    of at least 4 KiB, and an uncompressed size that is unknown or below 256 GiB.
    """
    if len(head) < 13 or head[0] != 0x5D:
        return False
    dict_size = int.from_bytes(head[1:5], "little")
    size = int.from_bytes(head[5:13], "little")
    if dict_size != 0xFFFFFFFF:
        if dict_size < 4096:
            return False
        top = 1 << (dict_size.bit_length() - 1)
        if dict_size not in (top, top | (top >> 1)):
            return False
    return size == (1 << 64) - 1 or size < (1 << 38)


def sniff(head: bytes) -> str | None:
    """The format whose magic starts ``head``: gzip, bzip2, xz, lzma (legacy), zstd."""
    for fmt, magic in MAGIC:
        if head.startswith(magic):
            return fmt
    return "lzma" if _lzma_alone(head) else None


def enabled_as(fmt: str) -> str:
    """The ``formats:`` entry that enables ``fmt`` (legacy .lzma rides on ``xz``)."""
    return "xz" if fmt == "lzma" else fmt


def renamed(key: str, formats: frozenset[str]) -> str:
    """``key`` without its compression suffix, if that format is enabled.

    Case-insensitive (``A.JSON.GZ`` -> ``A.JSON``); ``.tgz`` and friends become
    ``.tar``. A name that would be left empty, ``.`` or ``..`` keeps its suffix.
    """
    head, sep, last = key.rpartition("/")
    dot = last.rfind(".")
    if dot <= 0:
        return key
    fmt, replacement = SUFFIXES.get(last[dot:].lower(), (None, ""))
    if fmt not in formats:
        return key
    stem = last[:dot] + replacement
    if stem in ("", ".", ".."):
        return key
    return head + sep + stem


# --------------------------------------------------------------------------- decoders

class Decoder:
    """One member of a compressed stream."""

    eof = False
    leftover: bytes = b""

    def steps(self, data, limit: Callable[[], int]) -> Iterator[bytes]:
        raise NotImplementedError


class GzipDecoder(Decoder):
    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)  # gzip wrapper only, CRC32 and size checked

    def steps(self, data, limit):
        d = self._d
        while True:
            n = limit()
            out = d.decompress(data, n)
            data = d.unconsumed_tail
            if out:
                yield out
            if d.eof:
                self.eof, self.leftover = True, d.unused_data
                return
            if not data and len(out) < n:
                return


class _BufferedDecoder(Decoder):
    """bz2 and lzma decompressors: same API, input beyond ``max_length`` kept inside."""

    def __init__(self, d) -> None:
        self._d = d

    def steps(self, data, limit):
        d = self._d
        while True:
            out = d.decompress(data, limit())
            data = b""
            if out:
                yield out
            if d.eof:
                self.eof, self.leftover = True, d.unused_data
                return
            if d.needs_input:
                return


def bzip2_decoder() -> Decoder:
    import bz2

    return _BufferedDecoder(bz2.BZ2Decompressor())


def lzma_decoder(legacy: bool, memlimit: int) -> Decoder:
    try:
        import lzma
    except ImportError as exc:  # Python built without liblzma
        raise ImportError("this Python has no lzma module (build it with liblzma, e.g. "
                          "apt-get install liblzma-dev, then rebuild Python)") from exc
    fmt = lzma.FORMAT_ALONE if legacy else lzma.FORMAT_XZ
    return _BufferedDecoder(lzma.LZMADecompressor(format=fmt, memlimit=memlimit))


def zstd_context(max_window: int):
    try:
        import zstandard
    except ImportError as exc:
        raise ImportError("decompressing zstd needs the 'zstandard' package: "
                          "pip install zstandard") from exc
    return zstandard.ZstdDecompressor(max_window_size=max_window)


class ZstdDecoder(Decoder):
    def __init__(self, dctx) -> None:
        # One frame per decoder (read_across_frames=False) so that ``eof`` tells a
        # complete frame from a truncated one.
        self._d = dctx.decompressobj(write_size=ZSTD_WRITE_SIZE)

    def steps(self, data, limit):
        d = self._d
        mv = memoryview(data)
        for pos in range(0, len(mv), ZSTD_PIECE):
            out = d.decompress(mv[pos:pos + ZSTD_PIECE])
            if out:
                yield out
            if d.eof:
                self.eof = True
                self.leftover = bytes(d.unused_data) + bytes(mv[pos + ZSTD_PIECE:])
                return


def strip_zeros(data) -> bytes:
    """``data`` without leading NUL bytes: padding between members (tape blocks, xz
    stream padding) is accepted, as gzip and xz themselves accept it."""
    return bytes(data).lstrip(b"\0")
