"""Read the files inside a compiled Qt resource (``.rcc``) bundle.

Some Debian packages (GCompris) ship their photographs only inside ``.rcc`` files. The format
is small: a ``qres`` header with three offsets (the tree of entries, the payloads, the
names), big-endian throughout. A tree entry is 14 bytes (format 1) or 22 (format 2 and
later, with a modification time); a directory entry points at its children, a file entry at
its payload. Payloads are stored raw, zlib-compressed behind a 4-byte length (Qt's
``qCompress``), or zstd-compressed (format 3), which needs the ``zstandard`` module.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from ..errors import InputError

_COMPRESSED, _DIRECTORY, _ZSTD = 0x01, 0x02, 0x04


class QtResource:
    """``QtResource(path).files()`` -> ``{"dir/name.webp": bytes}`` for every file entry."""

    def __init__(self, path: str | Path, raw: bytes | None = None):
        self.path = Path(path)
        self.raw = self.path.read_bytes() if raw is None else raw
        if self.raw[:4] != b"qres":
            raise InputError(f"{self.path} is not a compiled Qt resource (no 'qres' header)")
        self.version, self.tree, self.data, self.names = struct.unpack(">4I", self.raw[4:20])
        if self.version not in (1, 2, 3):
            raise InputError(f"{self.path}: Qt resource format {self.version} is not supported")
        self.entry_size = 14 if self.version == 1 else 22

    @classmethod
    def from_bytes(cls, raw: bytes, name: str = "<bytes>") -> "QtResource":
        """A bundle already in memory (``name`` is used in messages)."""
        return cls(name, raw)

    def _name(self, offset: int) -> str:
        at = self.names + offset
        (length,) = struct.unpack(">H", self.raw[at:at + 2])
        return self.raw[at + 6:at + 6 + 2 * length].decode("utf-16-be")

    def _payload(self, offset: int, flags: int) -> bytes:
        at = self.data + offset
        (size,) = struct.unpack(">I", self.raw[at:at + 4])
        blob = self.raw[at + 4:at + 4 + size]
        if flags & _COMPRESSED:
            return zlib.decompress(blob[4:])  # qCompress: 4-byte expected length, then zlib
        if flags & _ZSTD:
            try:
                import zstandard
            except ImportError:
                raise InputError(f"{self.path} holds zstd-compressed entries: "
                                 "pip install zstandard") from None
            return zstandard.ZstdDecompressor().decompress(blob)
        return blob

    def _walk(self, index: int, prefix: str):
        at = self.tree + index * self.entry_size
        name_offset, flags = struct.unpack(">IH", self.raw[at:at + 6])
        name = self._name(name_offset) if index else ""
        path = f"{prefix}/{name}" if prefix else name
        if flags & _DIRECTORY:
            count, first = struct.unpack(">II", self.raw[at + 6:at + 14])
            for child in range(first, first + count):
                yield from self._walk(child, path)
        else:
            (data_offset,) = struct.unpack(">I", self.raw[at + 10:at + 14])
            yield path, data_offset, flags

    def entries(self) -> list[str]:
        """The paths of every file entry, without reading the payloads."""
        return [path for path, _, _ in self._walk(0, "")]

    def files(self, suffixes: tuple[str, ...] | None = None) -> dict[str, bytes]:
        """Every file entry (those whose name ends in one of ``suffixes``, any case)."""
        out = {}
        for path, offset, flags in self._walk(0, ""):
            if suffixes is None or path.lower().endswith(suffixes):
                out[path] = self._payload(offset, flags)
        return out
