"""Per-file licences from a Debian machine-readable copyright file (DEP-5).

A DEP-5 file is a list of stanzas; each ``Files:`` stanza names glob patterns and the
``License:`` (and ``Copyright:``) that apply to them, and the last stanza that matches a path
wins. This is enough to name the licence of each photograph a package ships.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True)
class Stanza:
    patterns: tuple[str, ...]
    licence: str
    copyright: str


def _fields(block: str) -> dict[str, str]:
    fields, key = {}, None
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


def parse_copyright(text: str) -> list[Stanza]:
    """The ``Files:`` stanzas of a DEP-5 copyright file, in order."""
    stanzas = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        f = _fields(block)
        if "files" in f and "license" in f:
            licence = f["license"].split(" ", 1)[0] if f["license"] else ""
            stanzas.append(Stanza(tuple(f["files"].split()), licence, " ".join(f.get("copyright", "").split())))
    return stanzas


def licence_of(stanzas: list[Stanza], path: str) -> tuple[str, str]:
    """``(licence, copyright)`` of ``path`` (relative to the upstream source), or
    ``("unknown", "")`` when no stanza matches."""
    found = ("unknown", "")
    for s in stanzas:
        if any(fnmatch.fnmatchcase(path, p) for p in s.patterns):
            found = (s.licence, s.copyright)
    return found
