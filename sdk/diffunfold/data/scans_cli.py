"""``diffunfold prepare-scans RAW_DIR OUT_DIR``: a site's raw MRD scans -> self-supervised training data."""

from __future__ import annotations

import argparse

from .. import cli_values as V

_DESCRIPTION = """\
Prepare a folder of raw scans, undersampled as they were acquired, for self-supervised
training: no fully sampled reference is needed or read. A scan is a raw MRD (ISMRMRD HDF5) file
as the scanner writes it, or a fastMRI-layout HDF5 file holding undersampled k-space (zeros
where a line was not acquired; its oversampled readout is cut to the recon matrix). Each slice goes through
the pipeline `diffunfold mri` and the MRD server use (prewhitening with the noise scan, or a
noise level estimated from the data; coil compression; ESPIRiT maps from the calibration lines;
scaling), and OUT_DIR gets one NAME.scans.h5 per raw file with the scaled k-space, the maps, the
acquired lines and the noise level. Only files directly in RAW_DIR are read; links are passed over.

Then train on them (the measured lines split into a data part and a held-out loss part, SSDU):
  diffunfold train --config mri-small --set data.source=scans --set data.path=OUT_DIR \\
      --set train.supervision=ssdu --set train.batch_size=2 --out runs/site-ssdu
With data.val_path set to scans of other exams, prepared the same way, validation scores how
well the model predicts acquired lines it was not given (val_scans.csv in the run folder).

Training windows are data.size rows of the readout (exact: the readout is fully sampled) by
every phase encode (the acquired lines cannot be cropped), so a 64 x 256 window holds the
pixels of four 64 x 64 crops: a smaller train.batch_size keeps the step's size.

A raw file that cannot be prepared is named with its reason and the others go on (exit status
1); --resume keeps what an earlier run prepared and does the rest.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prepare-scans",
        help="prepare a site's undersampled raw scans (MRD or fastMRI layout) for self-supervised training",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("raw", metavar="RAW_DIR", help="the folder of raw scans (MRD or fastMRI-layout .h5 files)")
    p.add_argument("out", metavar="OUT_DIR", help="where the prepared NAME.scans.h5 files go")
    p.add_argument(
        "--virtual-coils",
        type=V.Bounded(0, 64, integer=True),
        default=8,
        metavar="N",
        help="compress to N virtual coils (SVD over the calibration lines; 0 keeps every coil; default 8, "
        "as the simulated training scans)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the per-file summary as JSON")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true", help="replace prepared files (and --json) that exist")
    again.add_argument(
        "--resume", action="store_true", help="keep the prepared files that exist and prepare only the rest"
    )
    p.set_defaults(func=run_prepare_scans)


def run_prepare_scans(args) -> int:
    """Exit 0: every raw file prepared; 1: some failed (each named on stderr with its reason; the
    others were written); 2: none could be prepared, or a bad value."""
    from ..batch import finish, refuse_if_nothing_done
    from ..safe_io import refuse_existing, write_json
    from .raw_scans import prepare_scans

    if args.json:
        refuse_existing([args.json], args.overwrite or args.resume)
    batch = prepare_scans(args.raw, args.out, args.virtual_coils or None, args.overwrite, args.resume)
    refuse_if_nothing_done(batch, "raw file")
    if batch.skipped:
        print(f"kept {len(batch.skipped)} file(s) prepared before (--resume): {', '.join(batch.skipped[:5])}")
    if args.json:
        failed = [{"file": name, "error": reason} for name, reason in batch.failures]
        summary = {"command": "prepare-scans", "raw": str(args.raw), "files": batch.rows, "failed": failed}
        write_json(args.json, summary | {"kept": batch.skipped})
    return finish(batch, "raw file")
