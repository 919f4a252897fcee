"""Which Debian packages carry real photographs, and where inside them.

Each source names the archive members to read (globs), how a member's path maps to the path in
the upstream source tree (which the package's DEP-5 copyright file uses for
per-file licences), and, for GCompris, the Qt resource bundles that hold the images.
Versions are those of Debian 12 (bookworm), the release these were checked against; another
version is used as found and recorded in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_OPENCV_PHOTOS = (
    "aero1.jpg",
    "aero3.jpg",
    "aloeL.jpg",
    "apple.jpg",
    "baboon.jpg",
    "basketball1.png",
    "board.jpg",
    "building.jpg",
    "butterfly.jpg",
    "ela_original.jpg",
    "fruits.jpg",
    "graf1.png",
    "home.jpg",
    "leuvenA.jpg",
    "messi5.jpg",
    "orange.jpg",
    "pic1.png",
    "pic2.png",
    "pic3.png",
    "pic4.png",
    "pic5.png",
    "pic6.png",
    "rubberwhale1.png",
    "smarties.png",
    "squirrel_cls.jpg",
    "stuff.jpg",
)


@dataclass(frozen=True)
class PhotoSource:
    package: str
    members: tuple[str, ...]  # globs over the archive's paths
    to_upstream: tuple[str, str] = ("", "")  # member path -> upstream: strip [0], prepend [1]
    rcc: bool = False  # the members are Qt resource bundles holding the images
    rcc_prefix: str = ""  # rcc entry path = rcc_prefix + upstream path
    version_checked: str = ""
    notes: str = ""
    copyright: str = field(default="")

    def upstream(self, member: str) -> str:
        strip, prepend = self.to_upstream
        return prepend + (member[len(strip) :] if member.startswith(strip) else member)

    @property
    def copyright_member(self) -> str:
        return self.copyright or f"usr/share/doc/{self.package}/copyright"


PHOTO_SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource(
        "gcompris-qt-data",
        tuple(
            f"usr/share/gcompris-qt/rcc/{n}.rcc"
            for n in (
                "categorization",
                "erase",
                "explore_farm_animals",
                "explore_monuments",
                "explore_world_animals",
                "explore_world_music",
                "clickgame",
            )
        ),
        rcc=True,
        rcc_prefix="gcompris/",
        version_checked="3.1-2",
        notes="animals, monuments, musicians, objects; WebP inside Qt .rcc bundles",
    ),
    PhotoSource(
        "scratch",
        ("usr/share/scratch/Media/Backgrounds/*",),
        to_upstream=("usr/share/scratch/", ""),
        version_checked="1.4.0.6~dfsg1-6.1",
        notes="backgrounds, 480x360: streets, buildings, rooms, nature",
    ),
    PhotoSource(
        "opencv-doc",
        tuple(f"usr/share/doc/opencv-doc/examples/data/{n}" for n in _OPENCV_PHOTOS),
        to_upstream=("usr/share/doc/opencv-doc/examples/", "samples/"),
        version_checked="4.6.0+dfsg-12",
        notes="OpenCV's sample photographs (fruit, buildings, aerial, animals)",
    ),
    PhotoSource(
        "mate-backgrounds",
        ("usr/share/backgrounds/mate/nature/*.jpg",),
        to_upstream=("usr/share/backgrounds/mate/", ""),
        version_checked="1.26.0-1",
        notes="large nature photographs (macro, landscapes)",
    ),
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
