"""``diffunfold data photos OUT_DIR``: real photographs from Debian packages, with a manifest.

For each source of :mod:`.photo_sources` the archive is fetched (or found in ``--packages``),
its images are read without installing anything, and each is kept only when it looks like a
photograph: big enough, opaque, and without the large flat areas and few colours of a drawing.
Exact and near duplicates (a 64-bit difference hash within a few bits) are dropped. Each kept
photo goes to ``OUT/train/`` or ``OUT/held-out/`` by its SHA-256, so the split never changes
when sources are added; photos larger than ``max_side`` are downscaled (Lanczos) and stored as
PNG. ``OUT/manifest.json`` records, per photo, the package and version, the path inside it,
the licence from the package's copyright file, the SHA-256 of the original and of the file
written, and every file dropped with the reason.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import InputError
from ..safe_io import write_bytes, write_json
from .image_io import check_pixels
from .licences import licence_of, parse_copyright
from .packages import obtain, read_members
from .photo_sources import IMAGE_SUFFIXES, PHOTO_SOURCES, PhotoSource
from .qt_rcc import QtResource

HELD_OUT_FRACTION = 0.15
MIN_SIDE = 240


def held_out(sha256: str, fraction: float = HELD_OUT_FRACTION) -> bool:
    """The split of a file, from its content hash alone: stable whatever else is added."""
    return int(sha256[:8], 16) / 2**32 < fraction


def not_a_photo(image: Image.Image) -> str | None:
    """Why ``image`` is not taken for a photograph, or None when it is."""
    if min(image.size) < MIN_SIDE:
        return f"too small ({image.size[0]}x{image.size[1]}, under {MIN_SIDE} px)"
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if alpha.min() < 250:
            return "transparent pixels (a cut-out, not a photograph)"
    thumb = image.convert("RGB")
    thumb.thumbnail((256, 256), Image.Resampling.BOX)
    px = np.asarray(thumb).astype(np.int16)
    colours = len(np.unique(px.reshape(-1, 3) @ np.array([65536, 256, 1])))
    if colours < 3000:
        return f"only {colours} colours in a 256 px thumbnail (a drawing or chart)"
    same = (np.abs(np.diff(px, axis=0)).max(axis=2)[:, :-1] == 0) & (
        np.abs(np.diff(px, axis=1)).max(axis=2)[:-1, :] == 0
    )
    if same.mean() > 0.3:
        return f"{same.mean():.0%} of the image is flat colour (a drawing)"
    return None


def difference_hash(image: Image.Image) -> int:
    """A 64-bit difference hash: neighbouring-pixel order on a 9x8 grey thumbnail."""
    g = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def _images_of(source: PhotoSource, members: dict[str, bytes]):
    """``(upstream path, bytes)`` of every image the source's members hold."""
    for member, blob in sorted(members.items()):
        if source.rcc:
            for entry, data in sorted(QtResource.from_bytes(blob, member).files(IMAGE_SUFFIXES).items()):
                yield entry.removeprefix(source.rcc_prefix), data
        elif member.lower().endswith(IMAGE_SUFFIXES):
            yield source.upstream(member), blob


def _licence(stanzas, upstream: str) -> tuple[str, str]:
    # GCompris converts its .jpg/.png sources to .webp when it builds the bundles.
    stem = upstream.rsplit(".", 1)[0]
    for candidate in (upstream, stem + ".jpg", stem + ".png", stem + ".jpeg"):
        found = licence_of(stanzas, candidate)
        if found[0] != "unknown":
            return found
    return found


def _store(image: Image.Image, blob: bytes, name: str, folder: Path, max_side: int) -> tuple[Path, str]:
    """Write the original bytes, or a downscaled PNG when larger than ``max_side``."""
    folder.mkdir(parents=True, exist_ok=True)
    if max(image.size) <= max_side and name.lower().endswith((".jpg", ".jpeg", ".png")):
        path, data = folder / name, blob
    else:
        image = image.convert("RGB")
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        path, data = folder / (name.rsplit(".", 1)[0] + ".png"), buf.getvalue()
    write_bytes(path, data)
    return path, hashlib.sha256(data).hexdigest()


def _safe_name(package: str, upstream: str) -> str:
    return package + "__" + re.sub(r"[^A-Za-z0-9._-]+", "_", upstream.strip("/"))


class PhotoCollector:
    """Collects the photographs of the sources into ``out``; see the module docstring."""

    def __init__(
        self,
        out: Path,
        packages: Path,
        offline: bool = False,
        max_side: int = 1600,
        sources: tuple[PhotoSource, ...] = PHOTO_SOURCES,
    ):
        self.out, self.packages, self.offline = Path(out), Path(packages), offline
        self.max_side, self.sources = int(max_side), sources
        self.kept, self.dropped, self.archives, self.hashes = [], [], [], {}

    def run(self) -> dict:
        for source in self.sources:
            self._collect(source)
        if not self.kept:
            raise InputError("no photographs were found in the packages")
        manifest = {
            "kind": "photos",
            "held_out_fraction": HELD_OUT_FRACTION,
            "split_rule": "held-out when int(sha256[:8], 16) / 2**32 < fraction",
            "max_side": self.max_side,
            "packages": self.archives,
            "photos": self.kept,
            "dropped": self.dropped,
        }
        write_json(self.out / "manifest.json", manifest, indent=1)
        return manifest

    def _collect(self, source: PhotoSource) -> None:
        package = obtain("deb", source.package, self.packages, self.offline)
        self.archives.append(
            {
                "package": package.name,
                "version": package.version,
                "archive": package.path.name,
                "sha256": package.sha256,
            }
        )
        members = read_members(package, [*source.members, source.copyright_member])
        stanzas = parse_copyright(members.pop(source.copyright_member, b"").decode("utf-8", "replace"))
        for upstream, blob in tqdm(list(_images_of(source, members)), desc=source.package, unit="image", leave=False):
            self._consider(source, package.version, stanzas, upstream, blob)

    def _consider(self, source, version, stanzas, upstream: str, blob: bytes) -> None:
        record = {
            "package": source.package,
            "version": version,
            "path": upstream,
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
        try:
            with warnings.catch_warnings():  # Pillow's bomb warning refuses the image too
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(blob))
                check_pixels(image.height, image.width, "it")  # from the header, before decoding
                image.load()
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "not usable"
            self.dropped.append({**record, "reason": f"unreadable ({exc})"})
            return
        reason = not_a_photo(image) or self._duplicate(image, f"{source.package}:{upstream}")
        if reason:
            self.dropped.append({**record, "reason": reason})
            return
        split = "held-out" if held_out(record["sha256"]) else "train"
        path, written = _store(image, blob, _safe_name(source.package, upstream), self.out / split, self.max_side)
        licence, holder = _licence(stanzas, upstream)
        self.kept.append(
            {
                **record,
                "file": path.relative_to(self.out).as_posix(),
                "split": split,
                "size": list(image.size),
                "written_sha256": written,
                "licence": licence,
                "copyright": holder,
            }
        )

    def _duplicate(self, image: Image.Image, label: str) -> str | None:
        h = difference_hash(image)
        for other, name in self.hashes.items():
            if bin(h ^ other).count("1") <= 4:
                return f"a near-duplicate of {name}"
        self.hashes[h] = label
        return None
