"""Size limits for reading archives that someone else built.

A compressed member can claim, or expand to, any size. Nothing here spends memory first and
checks later: members are read in chunks and stop at their cap, compressed streams are inflated
with a bound on their output, and what one archive may expand to is at most ``MAX_RATIO`` times
its compressed size (above ``RATIO_FLOOR``, so that small, very compressible files pass; the
real archives expand 1.0-3.7x in total, single small files up to 50x).
"""

from __future__ import annotations

import io
import zlib

from ..errors import InputError

MAX_MEMBER_BYTES = 1 << 30  # one file read out of an archive
MAX_ARCHIVE_BYTES = 4 << 30  # everything one archive may expand to
MAX_RATIO = 100  # expanded / compressed, beyond RATIO_FLOOR
RATIO_FLOOR = 64 << 20
MAX_MEMBERS = 200_000  # entries of one tar stream or resource tree
CHUNK = 1 << 20


def expansion_limit(compressed: int) -> int:
    """The most bytes ``compressed`` bytes of an archive may expand to."""
    return min(MAX_ARCHIVE_BYTES, max(RATIO_FLOOR, MAX_RATIO * max(int(compressed), 0)))


def too_large(what: str, limit: int) -> InputError:
    return InputError(
        f"{what} expands to more than {limit:,} bytes (a decompression bomb, or a damaged "
        "archive); it was not read: use the archive from its distribution"
    )


def read_capped(stream, limit: int, what: str) -> bytes:
    """Everything ``stream`` holds, read in chunks; refused once it passes ``limit`` bytes."""
    parts, total = [], 0
    while block := stream.read(min(CHUNK, limit + 1 - total)):
        parts.append(block)
        total += len(block)
        if total > limit:
            raise too_large(what, limit)
    return b"".join(parts)


def inflate(blob: bytes, limit: int, what: str) -> bytes:
    """``zlib.decompress`` in chunks that stops past ``limit`` bytes of output (refused); a
    damaged or truncated stream is an :class:`InputError` naming ``what``."""
    d, parts, total = zlib.decompressobj(), [], 0
    try:
        while blob and total <= limit:
            part = d.decompress(blob, CHUNK)
            parts.append(part)
            total += len(part)
            blob = d.unconsumed_tail
    except zlib.error as exc:
        raise InputError(f"{what}: damaged compressed data ({exc})") from None
    if total > limit:
        raise too_large(what, limit)
    if not d.eof:
        raise InputError(f"{what}: the compressed data is truncated")
    return b"".join(parts)


class CappedReader(io.RawIOBase):
    """A read-only stream over ``raw`` that refuses to deliver more than ``limit`` bytes in all."""

    def __init__(self, raw, limit: int, what: str):
        self.raw, self.limit, self.what, self.count = raw, int(limit), what, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise too_large(self.what, self.limit)
        buffer[: len(data)] = data
        return len(data)


class FileSlice(io.RawIOBase):
    """``size`` bytes of an open file from ``offset``, read on demand (not loaded whole)."""

    def __init__(self, f, offset: int, size: int):
        self.f, self.start, self.size, self.at = f, int(offset), int(size), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.f.seek(self.start + self.at)
        data = self.f.read(min(len(buffer), self.size - self.at))
        buffer[: len(data)] = data
        self.at += len(data)
        return len(data)
