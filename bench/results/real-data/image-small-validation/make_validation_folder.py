"""The validation photos: the held-out photos that the quality harness does not score.

`bench/quality.py --photos DIR/held-out` scores 5 of the 39 held-out photos (spread evenly over
the sorted list, `diffunfold.data.held_out`). The other 34 were never trained on either, so
inference settings and model variants can be chosen on them and the 5 kept for the final word.
This links them into OUT/held-out, which `bench/quality.py --photos OUT/held-out` reads.

    python make_validation_folder.py data/photos/held-out val
"""
import argparse
import os
from pathlib import Path

from diffunfold.data.held_out import _spread
from diffunfold.data.images import ImageFolder

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("held_out", help="the held-out folder of `diffunfold data photos`")
p.add_argument("out", help="a new folder; OUT/held-out gets the links")
p.add_argument("--scored", type=int, default=5, help="photos the harness scores (its --images)")
a = p.parse_args()
ds = ImageFolder(a.held_out, 64, split="all", augment=False)
scored = set(_spread(len(ds), a.scored))
dest = Path(a.out) / "held-out"
dest.mkdir(parents=True, exist_ok=False)      # never mix into an existing folder
for i, rel in enumerate(ds.relpaths):
    if i not in scored:
        os.symlink(Path(a.held_out, rel).resolve(), dest / Path(rel).name)
print(f"{len(ds) - len(scored)} validation photos linked in {dest}")
