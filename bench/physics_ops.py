"""Cost of the data-fidelity kernels that the runtime runs around every network call.

For each task's operator at the given size: median time of ``grad(x, y) = A^T(A x - y)`` (one
unfolding iteration's physics) on numpy and on torch (CPU, or CUDA where present), float32,
in one run, with the ratio numpy/torch. A second table justifies the FFT used for numpy
arrays: the same ``grad`` with ``numpy.fft`` against threaded ``scipy.fft`` (the default), in
the same run. A third times the MRI normal operator (``A^H A`` with ``A^H y`` kept, the W-only
transform for 1-D masks, single-threaded FFTs below ``FFT_THREADS_FROM``) against the literal
``A^H(A x - y)`` it replaced, for the gradient and for the proximal step (CG), interleaved, at
``--mri-sizes``. Results go to bench/results/physics_ops-<machine>.md and .json; a run on a
busy machine writes nothing unless ``--allow-busy``.

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
from machine import LoadWatch, add_output_arguments, machine_info, record  # noqa: E402

import diffunfold._array as array_plumbing  # noqa: E402
from diffunfold.physics import make_operator, random_pair  # noqa: E402
from diffunfold.physics.cg import conjugate_gradient  # noqa: E402

NUMPY_FFT = SimpleNamespace(
    fftn=np.fft.fftn,
    ifftn=np.fft.ifftn,
    rfftn=np.fft.rfftn,
    irfftn=np.fft.irfftn,
    fftshift=np.fft.fftshift,
    ifftshift=np.fft.ifftshift,
)

CASES = [
    ("gaussian_blur", {"sigma": 3.0}),
    ("anisotropic_blur", {"sigma": (4.0, 1.5), "angle": 0.785}),
    ("sr", {"factor": 4}),
    ("sr", {"factor": 4, "kernel": "bicubic"}),
    ("inpainting", {"missing": 0.4}),
    ("mri", {"kind": "gaussian1d", "acceleration": 4, "ncoils": 15}),
]
MRI_MASKS = (("gaussian1d", 4), ("uniform1d", 8), ("gaussian2d", 8))
CG_STEPS = 10  # the proximal step's CG iterations in this comparison


def backend_rows(args) -> list[dict]:
    """``grad`` per task on numpy and on torch (CUDA where present)."""
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
            row = {
                "task": task,
                "params": str(params),
                "batch": batch,
                "numpy_ms": 1e3 * median_time(lambda: op.grad(x, y), args.repeats),
            }
            if torch is not None:
                xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
                with torch.no_grad():
                    row[f"torch_{device}_ms"] = 1e3 * median_time(lambda: op.grad(xt, yt), args.repeats, sync)
                row["numpy_over_torch"] = row["numpy_ms"] / row[f"torch_{device}_ms"]
            rows.append(row)
            print(row, flush=True)
    return rows


def fft_rows(args) -> list[dict]:
    """``grad`` with numpy.fft against scipy.fft (the default for numpy arrays)."""
    rows = []
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
            array_plumbing._SCIPY_FFT = None
            row["numpy_fft_over_scipy_fft"] = row["numpy_fft_ms"] / row["scipy_fft_ms"]
            rows.append(row)
            print(row, flush=True)
    return rows


def _interleaved(fns: dict, rounds: int) -> dict:
    """Median seconds per function, the functions alternating within each round."""
    times = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(rounds):
        for k, f in fns.items():
            times[k].append(median_time(f, 1))
    return {k: float(np.median(v)) for k, v in times.items()}


def mri_rows(args) -> list[dict]:
    """The normal operator against the literal ``A^H(A x - y)``: gradient and CG proximal step."""
    rows = []
    for n in args.mri_sizes:
        for kind, acc in MRI_MASKS:
            op = make_operator("mri", (n, n), kind=kind, acceleration=acc, ncoils=15)
            for batch in args.batch:
                x, _ = random_pair(op, batch=batch, dtype=np.complex64, seed=0)
                y = op.A(x)
                literal_normal = lambda u: op._adjoint(op._forward(u)) + u  # noqa: E731 (w = 1, L = 1)
                fns = {
                    "grad_literal": lambda: op._adjoint(op._forward(x) - y),
                    "grad_normal": lambda: op.grad(x, y),
                    "prox_literal": lambda: conjugate_gradient(literal_normal, op._adjoint(y) + x, x, CG_STEPS),
                    "prox_normal": lambda: op.prox(x, y, 1.0, CG_STEPS),
                }
                t = _interleaved(fns, args.rounds)
                row = {
                    "size": n,
                    "mask": f"{kind} {acc}x",
                    "batch": batch,
                    **{f"{k}_ms": 1e3 * v for k, v in t.items()},
                    "grad_ratio": t["grad_normal"] / t["grad_literal"],
                    "prox_ratio": t["prox_normal"] / t["prox_literal"],
                }
                rows.append(row)
                print(row, flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--mri-sizes",
        type=int,
        nargs="+",
        default=[64, 128, 256],
        help="sizes of the MRI normal-operator comparison (default 64 128 256)",
    )
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds of that comparison (default 9)")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    watch, info = LoadWatch(), machine_info()
    rows, ffts, mri = backend_rows(args), fft_rows(args), mri_rows(args)
    note = (
        "Time of one `grad(x, y) = A^T(A x - y)` call, float32, median of "
        f"{args.repeats} after a warm-up. numpy_over_torch > 1 means numpy is slower."
    )
    fft_note = (
        "FFT used for numpy arrays, same run: `numpy.fft` against `scipy.fft` with "
        "`workers=-1` (the default). A ratio > 1 means numpy.fft is slower."
    )
    mri_note = (
        "MRI normal operator, complex64, 15 coils, same run, median of "
        f"{args.rounds} interleaved rounds: `grad` = `A^H A x - A^H y` (A^H y kept) against the literal "
        f"`A^H(A x - y)`; `prox` = {CG_STEPS} CG steps on `A^H A + w` against the same CG on "
        "`A^H(A .) + w`. ratio = new / literal (below 1: faster)."
    )
    markdown = "\n\n".join([note, markdown_table(rows), fft_note, markdown_table(ffts), mri_note, markdown_table(mri)])
    record(
        "physics_ops",
        watch,
        info,
        args,
        {"backends": rows, "numpy_fft_choice": ffts, "mri_normal": mri},
        markdown,
        "Physics operators",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
