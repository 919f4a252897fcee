"""Does a faster backend cost quality? The bundled packages restore the demo's held-out data (the
held-out photos and head slices of ``diffunfold data`` under ``--data``, else scikit-image's photos
and synthetic phantoms) with
ONNX Runtime (float32, the reference path) and with OpenVINO (bf16 where the CPU has it, and
float32), same measurements and seeds; PSNR of each against the truth, and the difference.

    python bench/backend_quality.py                        # both bundled packages, 5 images per task
    python bench/backend_quality.py --data data            # on what `diffunfold data` wrote to data/
    python bench/backend_quality.py --images 2 --steps 8 --no-write

The target (issue 16): bf16 within 0.05 dB of the float32 path on every task.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt_number, markdown_table  # noqa: E402
from machine import LoadWatch, add_output_arguments, machine_info, record  # noqa: E402

from diffunfold.demo import DEFAULT_IMAGE_PACKAGE, DEFAULT_MRI_PACKAGE, TASKS  # noqa: E402
from diffunfold.demo_data import load_demo_data  # noqa: E402
from diffunfold.metrics import psnr  # noqa: E402
from diffunfold.physics.tasks import make_operator  # noqa: E402
from diffunfold.runtime import Solver  # noqa: E402

VARIANTS = (
    ("onnxruntime f32", "onnxruntime", {}),
    ("openvino bf16", "openvino", {"precision": "bf16"}),
    ("openvino f32", "openvino", {"precision": "f32"}),
)


def measurements(task, clean: np.ndarray, seed: int, mri_noise: float, noise: float):
    """``(operator, y, noise std)`` for every held-out item of ``task``, one operator for all."""
    shape = clean.shape[-2:]
    if task.is_mri:
        op = make_operator("mri", shape, **task.params, ncoils=15, seed=seed)
        std = [mri_noise * float(np.abs(op.A(x[None])).max()) for x in clean]
    else:
        op = make_operator(task.task, shape, **task.params)
        std = [noise] * len(clean)
    y = op.measure(clean, np.asarray(std), seed=[seed + i for i in range(len(clean))])
    return op, y.astype(np.complex64 if task.is_mri else np.float32), np.asarray(std)


def score_task(task, solvers: dict, clean: np.ndarray, args) -> list[dict]:
    op, y, std = measurements(task, clean, args.seed, args.mri_noise, args.noise)
    rows, ref = [], None
    for label, solver in solvers.items():
        t0 = time.perf_counter()
        est = np.asarray(solver.solve(y, op, seed=args.seed, steps=args.steps, noise_std=std).images)
        scores = [float(psnr(e, x, None if task.is_mri else 1.0)) for e, x in zip(est, clean)]
        ref = scores if ref is None else ref
        diff = [a - b for a, b in zip(scores, ref)]
        rows.append(
            {
                "task": task.key,
                "backend": label,
                "psnr": float(np.mean(scores)),
                "mean_diff_db": float(np.mean(diff)),
                "max_abs_diff_db": float(np.max(np.abs(diff))),
                "s": time.perf_counter() - t0,
            }
        )
        print(" ".join(f"{k}={fmt_number(v)}" for k, v in rows[-1].items()), flush=True)
    return rows


def run(args) -> tuple[list[dict], list[str]]:
    """The rows, and where each kind's held-out data came from."""
    rows, sources = [], []
    for path, mri in ((args.image_package, False), (args.mri_package, True)):
        solvers = {label: Solver.load(path, backend=b, **opts) for label, b, opts in VARIANTS}
        data = load_demo_data("mri" if mri else "image", args.data, args.size, args.images)
        clean = np.asarray(data["images"])
        sources.append(data["source"])
        for task in TASKS:
            if task.is_mri == mri:
                rows += score_task(task, solvers, clean, args)
    return rows, sources


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="bench/backend_quality.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--image-package", default=str(DEFAULT_IMAGE_PACKAGE))
    ap.add_argument("--mri-package", default=str(DEFAULT_MRI_PACKAGE))
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--noise", type=float, default=0.05, help="image noise std (default 0.05, the demo's)")
    ap.add_argument("--mri-noise", type=float, default=0.0, help="k-space noise over max|A x| (default 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--data",
        default="data",
        help="where `diffunfold data` wrote photos/ and mri/ (default data/; "
        "without them: scikit-image's photos and synthetic phantoms)",
    )
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    watch, info = LoadWatch(), machine_info()
    rows, sources = run(args)
    cols = ["task", "backend", "psnr", "mean_diff_db", "max_abs_diff_db", "s"]
    md = (
        f"Held-out data of the demo ({args.images} per task, {args.size} px, {args.steps} Euler steps, one sample, "
        f"seed {args.seed}; images: {sources[0]}; MRI: {sources[1]}): mean PSNR, and its difference to ONNX Runtime "
        "float32 per image (mean, largest).\n\n"
        + markdown_table(
            [{c: fmt_number(r[c]) for c in cols} for r in rows],
            cols,
            ["task", "backend", "PSNR dB", "mean diff dB", "max |diff| dB", "seconds"],
            fmt=str,
        )
    )
    # quality does not depend on the load (the seconds do): written either way, marked when busy
    record("backend_quality", watch, info, args, rows, md, "Backends: quality on the bundled packages", True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
