"""Request bodies handed to boto3 without copying the part buffer."""

from __future__ import annotations

import io


class BufferBody(io.RawIOBase):
    """A seekable, read-only view of a buffer, handed to boto3 as a request body.

    boto3 with ``botocore[crt]`` signs a bytes-like body by first copying it into a
    ``BytesIO``: one more part-sized copy per part in flight (measured: peak RSS of a
    1 GiB upload 300 MiB against a declared 80 MiB). A seekable body it reads in place.
    """

    def __init__(self, data: bytes | bytearray):
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), len(self._view) - self._pos))
        buffer[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return len(self._view)
