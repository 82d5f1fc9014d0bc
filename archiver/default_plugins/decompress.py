"""The ``decompress`` transform: gzip, bzip2, xz (and legacy .lzma), zstd.

YAML::

    transforms:
      - type: decompress
        formats: [gzip, zstd]      # default: gzip, bzip2, xz, zstd
        on_uncompressed: pass      # or "fail"
        keep_suffix: false         # report.json.gz is stored as report.json
        max_output_bytes: 64GiB
        max_ratio: 1000
        max_window_bytes: 128MiB

**Detection** is by magic bytes at the start of the stream (gzip ``1f 8b``, bzip2
``BZh``, xz ``fd 37 7a 58 5a 00``, zstd ``28 b5 2f fd``; legacy ``.lzma`` by a strict
header check, enabled with ``xz``). Anything else, including an empty artifact, is not
compressed: it passes through unchanged, or fails with ``on_uncompressed: fail``. Bytes
that start with a magic but do not decode are an error, never passed through.

**Members**: concatenated gzip members, bzip2 streams, xz streams and zstd frames
(skippable frames included) are all decoded; NUL padding between them is skipped. Any
other trailing data, and input that ends inside a member, is an error: never a short
output.

**Bomb guards** stop a decompression bomb early, while it expands, with a
:class:`~archiver.errors.TransformError`:

* ``max_output_bytes`` (default 64 GiB, large enough for real archives, small enough
  to stop a bomb before it fills a disk): total output;
* ``max_ratio`` (default 1000; plain deflate cannot exceed ~1032, real data rarely 100):
  once more than 1 MiB has come out, output may not exceed ``max_ratio`` times the input
  so far. The same ratio (again with 1 MiB of grace) also holds locally, for each 64 KiB
  of input together with the input since the last output (at most 1 MiB; a bzip2 block
  only comes out when its last byte arrives): a bomb hidden behind a long stretch of
  ordinary data is caught too, and one ``feed`` call stays bounded;
* ``max_window_bytes`` (default 128 MiB): a zstd frame declaring a larger window is
  refused before anything is allocated; it is also liblzma's memory limit for xz.

**Determinism**: input is handed to the decoder in fixed 64 KiB slices counted from the
start of the artifact, so the output and the guards' decisions depend on the bytes only,
never on how the pipeline chunked them.

**Memory**: the decoder state (zstd: up to ``max_window_bytes``; xz: its dictionary;
bzip2 ~4 MB; gzip 32 KiB), at most 64 KiB of pending input, and one output piece of at
most ~8 MiB: the core calls :meth:`DecompressStage.iter_feed` /
:meth:`~DecompressStage.iter_finish`, and each piece goes down the chain and into the
writers before the next is made, so memory stays flat whatever the ratio. The guards are
checked between pieces; a bomb at the start of an artifact is refused after ~64 MiB of
output at the defaults. ``feed``/``finish`` (which join the pieces) exist for the Stage
contract and for callers that want plain bytes; their output is bounded only by the local
ratio guard, roughly ``max_ratio * (chunk + 1 MiB)``.

Keys: :meth:`DecompressTransform.rename` drops ``.gz .gzip .bz2 .xz .lzma .zst .zstd``
(case-insensitive; ``.tgz .tbz .tbz2 .txz .tzst`` become ``.tar``) for enabled formats
unless ``keep_suffix``. It is decided from the key alone, before any byte is seen, so an
artifact named ``x.gz`` that turns out not to be compressed is still stored as ``x``
(its facts then say ``"format": null``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import ByteSize, Field, field_validator

from archiver.components import ArtifactContext, ComponentConfig, Stage, Transform, no_repeats
from archiver.errors import TransformError
from archiver.hookspecs import hookimpl

from . import decompress_formats as fmts

Format = Literal["gzip", "bzip2", "xz", "zstd"]
FORMATS: tuple[str, ...] = ("gzip", "bzip2", "xz", "zstd")

SLICE = 64 << 10        # input handed to the decoder per call (fixed, see "Determinism")
RATIO_GRACE = 1 << 20   # output allowed before the ratio guard applies
# Input that produced no output yet still counts for the local ratio guard, up to this
# much: a bzip2 block (at most ~910 kB compressed) only comes out when it is complete.
QUIET_MAX = 1 << 20


class DecompressConfig(ComponentConfig):
    formats: list[Format] = Field(default_factory=lambda: list(FORMATS), min_length=1)
    on_uncompressed: Literal["pass", "fail"] = "pass"
    keep_suffix: bool = False
    max_output_bytes: Annotated[ByteSize, Field(gt=0)] = ByteSize(64 << 30)
    max_ratio: float = Field(1000.0, ge=1.0)
    max_window_bytes: Annotated[ByteSize, Field(ge=1 << 10, le=1 << 31)] = ByteSize(128 << 20)

    _unique = field_validator("formats")(no_repeats)


def _join(pieces: list[bytes]) -> bytes:
    if not pieces:
        return b""
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # unreachable


class DecompressStage(Stage):
    """Detects the format from the first bytes, then decodes member after member."""

    def __init__(self, config: DecompressConfig) -> None:
        self._cfg = config
        self._formats = frozenset(config.formats)
        self._state = "detect"  # -> "pass" | "decode"
        self._head = bytearray()
        self._slice = bytearray()
        self._format: str | None = None
        self._zstd = None
        self._dec: fmts.Decoder | None = None
        self._members = 0
        self._in = 0    # bytes fed
        self._fed = 0   # bytes handed to decoders (whole slices)
        self._out = 0
        self._quiet = 0  # input of the latest slices that produced no output
        self._finished = False

    # ------------------------------------------------------------------ Stage API

    def feed(self, chunk: bytes) -> bytes:
        return _join(list(self.iter_feed(chunk)))

    def finish(self) -> bytes:
        return _join(list(self.iter_finish()))

    def iter_feed(self, chunk: bytes) -> Iterator[bytes]:
        """``feed`` as pieces of at most ~8 MiB, guards checked before each piece, for a
        caller that can pass pieces on as they come (see the module's "Memory")."""
        if self._finished:
            raise TransformError("decompress: feed() called after finish()")
        if not chunk:
            return
        self._in += len(chunk)
        if self._state == "pass":
            self._out += len(chunk)
            yield chunk
            return
        if self._state == "detect":
            if self._head or len(chunk) < fmts.DETECT_LEN:
                self._head += chunk
                if len(self._head) < fmts.DETECT_LEN:
                    return
                chunk = bytes(self._head)
                self._head.clear()
            self._detect(chunk)
            if self._state == "pass":
                self._out += len(chunk)
                yield chunk
                return
        yield from self._decode(chunk)

    def iter_finish(self) -> Iterator[bytes]:
        """``finish`` as pieces, like :meth:`iter_feed`."""
        if self._finished:
            raise TransformError("decompress: finish() called twice")
        self._finished = True
        if self._state == "detect":
            head = bytes(self._head)
            self._head.clear()
            self._detect(head)
            if self._state == "pass":
                self._out += len(head)
                if head:
                    yield head
                return
            self._slice += head
        if self._state == "pass":
            return
        if self._slice:
            data = bytes(self._slice)
            self._slice.clear()
            yield from self._run(data)
        if self._dec is not None:
            raise TransformError(
                f"decompress: {self._format} input is truncated: it ends inside "
                f"{self._member_word()} {self._members} after {self._in} bytes; "
                "the artifact is incomplete or corrupt")

    def facts(self) -> dict[str, Any]:
        return {"format": self._format, "input_bytes": self._in,
                "output_bytes": self._out, "members": self._members}

    # ------------------------------------------------------------------ detection

    def _detect(self, head: bytes) -> None:
        found = fmts.sniff(head[:fmts.DETECT_LEN])
        if found is not None and fmts.enabled_as(found) in self._formats:
            self._format, self._state = found, "decode"
            if found == "zstd":
                self._zstd = self._load(fmts.zstd_context, int(self._cfg.max_window_bytes))
            return
        if self._cfg.on_uncompressed == "fail":
            if not head:
                what = "the artifact is empty"
            elif found is None:
                what = "no known compression format at its start (magic bytes)"
            else:
                what = (f"it is {found}-compressed but formats is "
                        f"[{', '.join(self._cfg.formats)}]")
            raise TransformError(f"decompress: input is not compressed: {what} "
                                 "(on_uncompressed: fail)")
        self._state = "pass"

    @staticmethod
    def _load(factory, *args):
        try:
            return factory(*args)
        except ImportError as exc:
            raise TransformError(f"decompress: {exc}") from exc

    # ------------------------------------------------------------------ decoding

    def _decode(self, chunk: bytes) -> Iterator[bytes]:
        mv = memoryview(chunk)
        pos = 0
        if self._slice:
            pos = SLICE - len(self._slice)
            self._slice += mv[:pos]
            if len(self._slice) < SLICE:
                return
            data = bytes(self._slice)
            self._slice.clear()
            yield from self._run(data)
        while len(mv) - pos >= SLICE:
            yield from self._run(mv[pos:pos + SLICE])
            pos += SLICE
        if pos < len(mv):
            self._slice += mv[pos:]

    def _new_decoder(self) -> fmts.Decoder:
        fmt = self._format
        if fmt == "gzip":
            return fmts.GzipDecoder()
        if fmt == "bzip2":
            return fmts.bzip2_decoder()
        if fmt == "zstd":
            return fmts.ZstdDecoder(self._zstd)
        # liblzma counts its whole decoder; the dictionary dominates.
        return self._load(fmts.lzma_decoder, fmt == "lzma",
                          int(self._cfg.max_window_bytes) + (1 << 20))

    def _room(self) -> int:
        # One byte more than allowed, so that crossing max_output_bytes is seen.
        return max(1, min(fmts.STEP, self._cfg.max_output_bytes - self._out + 1))

    def _run(self, data) -> Iterator[bytes]:
        """Decode one slice completely, member after member, guarding every piece."""
        start, first_out = self._fed, self._out
        self._fed += len(data)
        window = self._quiet + len(data)
        slice_cap = max(RATIO_GRACE, self._cfg.max_ratio * window)
        try:
            while data:
                if self._dec is None:
                    data = fmts.strip_zeros(data)
                    if not data:
                        break
                    if self._members and self._format == "lzma":
                        raise TransformError(
                            f"decompress: {len(data)} bytes of trailing data after the lzma "
                            f"stream (input bytes {start}..{self._fed - 1})")
                    self._dec = self._new_decoder()
                    self._members += 1
                for out in self._dec.steps(data, self._room):
                    self._out += len(out)
                    self._guard(start, first_out, slice_cap)
                    yield out
                if not self._dec.eof:
                    break
                data, self._dec = self._dec.leftover, None
        except TransformError:
            raise
        except Exception as exc:  # zlib.error, OSError (bz2), LZMAError, ZstdError, ...
            raise TransformError(self._corrupt(exc, start)) from exc
        self._quiet = 0 if self._out > first_out else min(window, QUIET_MAX)

    def _guard(self, start: int, first_out: int, slice_cap: float) -> None:
        """Raise when output crossed a limit; called after each bounded output piece."""
        cfg, fmt = self._cfg, self._format
        hint = "refusing a likely decompression bomb; raise {} if this artifact is legitimate"
        if self._out > cfg.max_output_bytes:
            raise TransformError(
                f"decompress: {fmt} output exceeds max_output_bytes="
                f"{int(cfg.max_output_bytes)} ({_size(cfg.max_output_bytes)}) after "
                f"{self._fed} input bytes; " + hint.format("max_output_bytes"))
        if self._out > RATIO_GRACE and self._out > cfg.max_ratio * self._fed:
            raise TransformError(
                f"decompress: {fmt} expands more than max_ratio={cfg.max_ratio:g}: "
                f"{_size(self._out)} from the first {self._fed} input bytes; "
                + hint.format("max_ratio"))
        if self._out - first_out > slice_cap:
            raise TransformError(
                f"decompress: {fmt} expands more than max_ratio={cfg.max_ratio:g}: input "
                f"bytes {start - self._quiet}..{self._fed - 1} alone produce more than "
                f"{_size(slice_cap)}; "
                + hint.format("max_ratio"))

    def _member_word(self) -> str:
        return {"gzip": "member", "zstd": "frame"}.get(self._format or "", "stream")

    def _corrupt(self, exc: Exception, start: int) -> str:
        fmt, text = self._format, str(exc) or type(exc).__name__
        where = (f"{self._member_word()} {self._members}, within input bytes "
                 f"{start}..{self._fed - 1}")
        if fmt == "zstd" and "too much memory" in text:
            return (f"decompress: zstd frame ({where}) declares a window larger than "
                    f"max_window_bytes={int(self._cfg.max_window_bytes)} "
                    f"({_size(self._cfg.max_window_bytes)}): {text}")
        if fmt in ("xz", "lzma") and "memory" in text.lower():
            return (f"decompress: {fmt} stream ({where}) needs more decoder memory than "
                    f"max_window_bytes={int(self._cfg.max_window_bytes)} allows: {text}")
        return f"decompress: {fmt} data is corrupt ({where}): {text}"


class DecompressTransform(Transform):
    """``type: decompress``: stores decompressed copies; see the module documentation
    for detection, bomb guards and memory bounds."""

    name = "decompress"
    Config = DecompressConfig
    changes_bytes = True
    config: DecompressConfig

    def stage(self, ctx: ArtifactContext) -> Stage:
        return DecompressStage(self.config)

    def rename(self, key: str) -> str:
        if self.config.keep_suffix:
            return key
        return fmts.renamed(key, frozenset(self.config.formats))


@hookimpl
def archiver_register_transforms(register) -> None:
    register(DecompressTransform)
