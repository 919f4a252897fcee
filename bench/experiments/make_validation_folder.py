"""The validation photos: the held-out photos that the quality harness does not score.

`bench/quality.py --photos DIR/held-out` scores `--images` (default 5) of the held-out photos,
spread evenly over the sorted list (`diffunfold.data.held_out.held_out_photos`). The others were
never trained on either, so inference settings and model variants can be chosen on them and the
scored ones kept for the final word. This links them into OUT/held-out, which
`bench/quality.py --photos OUT/held-out` reads.

    python bench/experiments/make_validation_folder.py data/photos/held-out val
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/experiments/make_validation_folder.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("held_out", help="the held-out folder of `diffunfold data photos`")
    p.add_argument("out", help="a new folder; OUT/held-out gets the links")
    p.add_argument("--scored", type=int, default=5, help="photos the harness scores (its --images, default 5)")
    return p.parse_args(argv)


def photo_name(relpath: str) -> str:
    """A photo's name as ``held_out_photos`` reports it."""
    return Path(relpath).stem.split("__", 1)[-1]


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from diffunfold.data.held_out import held_out_photos
    from diffunfold.data.image_datasets import ImageFolder

    ds = ImageFolder(a.held_out, 64, split="all", augment=False)
    scored = set(held_out_photos(a.held_out, 64, a.scored)[0])  # the photos the harness scores
    keep = [rel for rel in ds.relpaths if photo_name(rel) not in scored]
    if len(ds.relpaths) - len(keep) != len(scored):
        print("error: photo names are not unique; cannot tell the scored photos apart", file=sys.stderr)
        return 2
    dest = Path(a.out) / "held-out"
    dest.mkdir(parents=True, exist_ok=False)  # never mix into an existing folder
    for rel in keep:
        os.symlink(Path(a.held_out, rel).resolve(), dest / Path(rel).name)
    print(f"{len(keep)} validation photos linked in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
