"""Cost of the data-fidelity kernels that the runtime runs around every network call.

For each task's operator at the given size: median time of ``grad(x, y) = A^T(A x - y)`` (one
unfolding iteration's physics) on numpy and on torch (CPU, or CUDA where present), float32,
in one run, with the ratio numpy/torch. Results go to bench/results/physics_ops-<machine>.md
and .json.

    python bench/physics_ops.py --size 256 --batch 1 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, write_results  # noqa: E402

from diffunfold.physics import make_operator, random_pair  # noqa: E402

CASES = [
    ("gaussian_blur", {"sigma": 3.0}),
    ("anisotropic_blur", {"sigma": (4.0, 1.5), "angle": 0.785}),
    ("sr", {"factor": 4}),
    ("sr", {"factor": 4, "kernel": "bicubic"}),
    ("inpainting", {"missing": 0.4}),
    ("mri", {"kind": "gaussian1d", "acceleration": 4, "ncoils": 15}),
]


def median_time(fn, repeats: int, sync=lambda: None) -> float:
    fn()  # warm-up: caches constants on the device, plans FFTs
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    try:
        import torch
    except ImportError:
        torch = None
    device = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    rows = []
    for task, params in CASES:
        op = make_operator(task, (args.size, args.size), **params)
        for batch in args.batch:
            x, _ = random_pair(op, batch=batch, dtype=np.float32, seed=0)
            y = op.A(x)
            row = {"task": task, "params": str(params), "batch": batch,
                   "numpy_ms": 1e3 * median_time(lambda: op.grad(x, y), args.repeats)}
            if torch is not None:
                xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
                with torch.no_grad():
                    row[f"torch_{device}_ms"] = 1e3 * median_time(lambda: op.grad(xt, yt), args.repeats, sync)
                row["numpy_over_torch"] = row["numpy_ms"] / row[f"torch_{device}_ms"]
            rows.append(row)
            print(row, flush=True)

    cols = list(rows[0])
    table = "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + [
        "| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |"
        for r in rows])
    note = ("Time of one `grad(x, y) = A^T(A x - y)` call, float32, median of "
            f"{args.repeats} after a warm-up. numpy_over_torch > 1 means numpy is slower.")
    path = write_results("physics_ops", machine_info(),
                         {"size": args.size, "batches": args.batch, "repeats": args.repeats, "dtype": "float32"},
                         rows, note + "\n\n" + table)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
