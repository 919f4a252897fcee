"""Reference-free quality of MRI packages on a site's held-out scans: how well each predicts the
acquired lines it was not given (:mod:`diffunfold.training.scan_validation`, the validation of
``data.source = "scans"``), through the runtime with each package's default schedule.

    python bench/held_out_lines.py --scans runs/site-scans-held-out --package runs/pkg/a runs/pkg/b \\
        --windows 12 --out bench/results/self-supervised/site-scans
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import LoadWatch, add_output_arguments, machine_info, record  # noqa: E402

from diffunfold.package import ModelPackage  # noqa: E402
from diffunfold.runtime.solver import Solver  # noqa: E402
from diffunfold.training.scan_validation import HeldOutScans  # noqa: E402
from diffunfold.training.self_supervised import LOSS_FRACTION  # noqa: E402


def rows_for(packages: list[str], windows: HeldOutScans, seed: int) -> list[dict]:
    rows = []
    for path in packages:
        solver = Solver.load(ModelPackage.open(path))
        t0 = time.perf_counter()
        score = windows.score(
            lambda w, j: solver.solve(w["y"], w["operator"], seed=seed + j, noise_std=w["sigma_y"]).images
        )
        rows.append({"package": Path(path).name, **score, "seconds": (time.perf_counter() - t0) / score["windows"]})
        print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict], args) -> str:
    lines = [
        f"{rows[0]['windows']} windows of {args.rows} readout rows from `{args.scans}`, each split once "
        f"({LOSS_FRACTION} of the acquired lines outside the calibration block held out), the package's default "
        "schedule; normalised error of the held-out lines in dB (lower is better) and the SENSE estimate's from "
        "the same lines.",
        "",
        "| package | held-out lines, model (dB) | SENSE (dB) | model better by (dB) | s / window |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['package']} | {r['nmse_model_db']:.2f} | {r['nmse_sense_db']:.2f} | {r['gain_db']:+.2f} | "
            f"{r['seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scans", required=True, help="prepared held-out scans (diffunfold prepare-scans OUT_DIR)")
    p.add_argument("--package", nargs="+", required=True, help="MRI model packages")
    p.add_argument("--windows", type=int, default=12, help="held-out slices, one window each")
    p.add_argument("--rows", type=int, default=64, help="readout rows per window (the training data.size)")
    p.add_argument("--seed", type=int, default=0)
    add_output_arguments(p)
    a = p.parse_args(argv)
    watch, info = LoadWatch(), machine_info()
    windows = HeldOutScans(a.scans, a.rows, a.windows, LOSS_FRACTION, "lines", a.seed)
    rows = rows_for(a.package, windows, a.seed)
    record("held-out-lines", watch, info, a, rows, markdown(rows, a), "Held-out lines of held-out scans")
    return 0


if __name__ == "__main__":
    sys.exit(main())
