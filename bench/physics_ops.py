"""Cost of the data-fidelity kernels that the runtime runs around every network call.

For each task's operator at the given size: median time of ``grad(x, y) = A^T(A x - y)`` (one
unfolding iteration's physics) on numpy and on torch (CPU, or CUDA where present), float32,
in one run, with the ratio numpy/torch. A second table justifies the FFT used for numpy
arrays: the same ``grad`` with ``numpy.fft`` against threaded ``scipy.fft`` (the default), in
the same run. Results go to bench/results/physics_ops-<machine>.md and .json.

    python bench/physics_ops.py --size 256 --batch 1 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, median_time  # noqa: E402
from machine import machine_info, write_results  # noqa: E402

import diffunfold._array as array_plumbing  # noqa: E402
from diffunfold.physics import make_operator, random_pair  # noqa: E402

NUMPY_FFT = SimpleNamespace(fftn=np.fft.fftn, ifftn=np.fft.ifftn, rfftn=np.fft.rfftn, irfftn=np.fft.irfftn,
                            fftshift=np.fft.fftshift, ifftshift=np.fft.ifftshift)

CASES = [
    ("gaussian_blur", {"sigma": 3.0}),
    ("anisotropic_blur", {"sigma": (4.0, 1.5), "angle": 0.785}),
    ("sr", {"factor": 4}),
    ("sr", {"factor": 4, "kernel": "bicubic"}),
    ("inpainting", {"missing": 0.4}),
    ("mri", {"kind": "gaussian1d", "acceleration": 4, "ncoils": 15}),
]


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

    fft_rows = []
    for task, params in CASES:
        if task not in ("gaussian_blur", "mri"):
            continue
        op = make_operator(task, (args.size, args.size), **params)
        for batch in args.batch:
            x, _ = random_pair(op, batch=batch, dtype=np.float32, seed=0)
            y = op.A(x)
            row = {"task": task, "batch": batch}
            for name, impl in (("numpy_fft_ms", NUMPY_FFT), ("scipy_fft_ms", None)):
                array_plumbing._SCIPY_FFT = impl  # None: fft_of builds the default again
                row[name] = 1e3 * median_time(lambda: op.grad(x, y), args.repeats)
            row["numpy_fft_over_scipy_fft"] = row["numpy_fft_ms"] / row["scipy_fft_ms"]
            fft_rows.append(row)
            print(row, flush=True)

    note = ("Time of one `grad(x, y) = A^T(A x - y)` call, float32, median of "
            f"{args.repeats} after a warm-up. numpy_over_torch > 1 means numpy is slower.")
    fft_note = ("FFT used for numpy arrays, same run: `numpy.fft` against `scipy.fft` with "
                "`workers=-1` (the default). A ratio > 1 means numpy.fft is slower.")
    path = write_results("physics_ops", machine_info(),
                         {"size": args.size, "batches": args.batch, "repeats": args.repeats, "dtype": "float32"},
                         {"backends": rows, "numpy_fft_choice": fft_rows},
                         f"{note}\n\n{markdown_table(rows)}\n\n{fft_note}\n\n{markdown_table(fft_rows)}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
