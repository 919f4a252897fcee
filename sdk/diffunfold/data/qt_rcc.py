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
from pathlib import Path

from ..errors import InputError
from . import limits

_COMPRESSED, _DIRECTORY, _ZSTD = 0x01, 0x02, 0x04


MAX_DEPTH = 64  # folders inside folders; real bundles nest a handful


class QtResource:
    """``QtResource(path).files()`` -> ``{"dir/name.webp": bytes}`` for every file entry.

    The bundle may be hostile: every offset is checked against the bundle, the tree walk
    visits each entry at most once (no cycles, no shared children, so no exponential fan-out)
    within :data:`MAX_DEPTH` and :data:`limits.MAX_MEMBERS`, and payloads inflate within
    :mod:`.limits`; anything malformed is an :class:`InputError` naming the bundle."""

    def __init__(self, path: str | Path, raw: bytes | None = None):
        self.path = Path(path)
        self.raw = self.path.read_bytes() if raw is None else raw
        if self.raw[:4] != b"qres":
            raise InputError(f"{self.path} is not a compiled Qt resource (no 'qres' header)")
        self.version, self.tree, self.data, self.names = self._unpack(">4I", 4)
        if self.version not in (1, 2, 3):
            raise InputError(f"{self.path}: Qt resource format {self.version} is not supported")
        self.entry_size = 14 if self.version == 1 else 22
        self.left = limits.expansion_limit(len(self.raw))  # what the payloads may still inflate to

    @classmethod
    def from_bytes(cls, raw: bytes, name: str = "<bytes>") -> QtResource:
        """A bundle already in memory (``name`` is used in messages)."""
        return cls(name, raw)

    def _unpack(self, fmt: str, at: int) -> tuple:
        size = struct.calcsize(fmt)
        if at < 0 or at + size > len(self.raw):
            raise InputError(
                f"{self.path} is truncated or damaged: it ends at byte {len(self.raw):,}, "
                f"an entry points to byte {at:,}"
            )
        return struct.unpack(fmt, self.raw[at : at + size])

    def _bytes(self, at: int, size: int) -> bytes:
        if at + size > len(self.raw):
            raise InputError(
                f"{self.path} is truncated: a {size:,}-byte payload at byte {at:,} runs past "
                f"its end ({len(self.raw):,} bytes)"
            )
        return self.raw[at : at + size]

    def _name(self, offset: int) -> str:
        at = self.names + offset
        (length,) = self._unpack(">H", at)
        try:
            return self._bytes(at + 6, 2 * length).decode("utf-16-be")
        except UnicodeDecodeError:
            raise InputError(f"{self.path}: an entry name is not valid UTF-16") from None

    def _payload(self, offset: int, flags: int, what: str) -> bytes:
        at = self.data + offset
        (size,) = self._unpack(">I", at)
        blob = self._bytes(at + 4, size)
        cap = min(limits.MAX_MEMBER_BYTES, self.left)
        if flags & _COMPRESSED:  # qCompress: the length it expands to (4 bytes), then zlib
            (declared,) = struct.unpack(">I", blob[:4]) if len(blob) >= 4 else (0,)
            if declared > cap:
                raise limits.too_large(what, cap)
            out = limits.inflate(blob[4:], declared, what)
        elif flags & _ZSTD:
            try:
                import zstandard
            except ImportError:
                raise InputError(f"{self.path} holds zstd-compressed entries: pip install zstandard") from None
            try:
                with zstandard.ZstdDecompressor().stream_reader(blob) as stream:
                    out = limits.read_capped(stream, cap, what)
            except zstandard.ZstdError as exc:
                raise InputError(f"{what}: damaged compressed data ({exc})") from None
        else:
            out = blob
        self.left -= len(out)
        return out

    def _walk(self):
        """``(path, data offset, flags)`` of every file entry, depth first."""
        end = (
            min(o for o in (self.data, self.names, len(self.raw)) if o > self.tree)
            if self.tree < len(self.raw)
            else self.tree
        )
        count = (end - self.tree) // self.entry_size  # entries the tree region can hold
        seen, stack = {0}, [(0, "", 0)]
        while stack:
            index, prefix, depth = stack.pop()
            at = self.tree + index * self.entry_size
            name_offset, flags = self._unpack(">IH", at)
            name = self._name(name_offset) if index else ""
            path = f"{prefix}/{name}" if prefix else name
            if not flags & _DIRECTORY:
                (data_offset,) = self._unpack(">I", at + 10)
                yield path, data_offset, flags
                continue
            children, first = self._unpack(">II", at + 6)
            if depth >= MAX_DEPTH or first + children > min(count, limits.MAX_MEMBERS):
                raise InputError(
                    f"{self.path}: the folder {path or '/'!r} lists entries outside the tree "
                    f"(or nests deeper than {MAX_DEPTH}); the bundle is damaged"
                )
            for child in range(first + children - 1, first - 1, -1):
                if child in seen:
                    raise InputError(
                        f"{self.path}: the entry tree loops back on itself (entry {child} is "
                        "listed twice); the bundle is damaged"
                    )
                seen.add(child)
                stack.append((child, path, depth + 1))

    def entries(self) -> list[str]:
        """The paths of every file entry, without reading the payloads."""
        return [path for path, _, _ in self._walk()]

    def files(self, suffixes: tuple[str, ...] | None = None) -> dict[str, bytes]:
        """Every file entry (those whose name ends in one of ``suffixes``, any case)."""
        out = {}
        for path, offset, flags in self._walk():
            if suffixes is None or path.lower().endswith(suffixes):
                out[path] = self._payload(offset, flags, f"{self.path}: {path}")
        return out
