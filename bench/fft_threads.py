"""When do threaded FFTs pay? scipy.fft with one worker against all cores, on the transforms the
MRI operator runs: a batch of coil images ``(B x coils, H, W)`` complex64, 2-D (``fftn`` over H and W)
and 1-D (over W, the 1-D-mask normal operator). Interleaved rounds, median of each; ratio =
threaded / single (< 1: threads pay). The smallest array from which threads pay at every larger
size is the threshold for ``diffunfold._array.FFT_THREADS_FROM``.

    python bench/fft_threads.py                    # 32..256 px, 15 coils, batch 1 and 4
    python bench/fft_threads.py --size 64 128 --no-write
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.fft

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt_number, markdown_table  # noqa: E402
from machine import LoadWatch, add_output_arguments, machine_info, record  # noqa: E402


def time_pair(x: np.ndarray, axes: tuple[int, ...], rounds: int) -> tuple[float, float]:
    """Median seconds of a forward + inverse transform with 1 worker and with all cores."""
    times = {1: [], -1: []}
    for _ in range(rounds):
        for workers in (1, -1):
            t0 = time.perf_counter()
            scipy.fft.ifftn(scipy.fft.fftn(x, axes=axes, workers=workers), axes=axes, workers=workers)
            times[workers].append(time.perf_counter() - t0)
    return statistics.median(times[1]), statistics.median(times[-1])


def run(args) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for size in args.size:
        for batch in args.batch:
            shape = (batch * args.coils, size, size)
            x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
            for name, axes in (("2-D", (-2, -1)), ("1-D (W)", (-1,))):
                single, threaded = time_pair(x, axes, args.rounds)
                rows.append(
                    {
                        "size": size,
                        "batch": batch,
                        "transform": name,
                        "elements": x.size,
                        "single_ms": 1e3 * single,
                        "threaded_ms": 1e3 * threaded,
                        "ratio": threaded / single,
                    }
                )
                print(" ".join(f"{k}={fmt_number(v)}" for k, v in rows[-1].items()), flush=True)
    return rows


def threshold(rows: list[dict], margin: float = 0.95) -> int | None:
    """The smallest element count from which threads are faster by ``1 - margin`` at every count
    on, judged by the median ratio of the rows (transforms, batches) with that count."""
    by_count: dict[int, list[float]] = {}
    for r in rows:
        by_count.setdefault(r["elements"], []).append(r["ratio"])
    counts = sorted(by_count)
    for c in counts:
        if all(statistics.median(by_count[k]) < margin for k in counts if k >= c):
            return c
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="bench/fft_threads.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--coils", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=15)
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    watch, info = LoadWatch(), machine_info()
    rows = run(args)
    t = threshold(rows)
    cols = ["size", "batch", "transform", "elements", "single_ms", "threaded_ms", "ratio"]
    md = (
        f"Forward + inverse complex64 FFT of (batch x {args.coils} coils, size, size), median of {args.rounds} "
        "interleaved rounds; ratio = all cores / one worker.\n\n"
        + markdown_table([{c: fmt_number(r[c]) for c in cols} for r in rows], cols, fmt=str)
        + (f"\n\nThreads pay from {t} elements on." if t else "\n\nThreads paid at no size here.")
    )
    record("fft_threads", watch, info, args, rows, md, "FFT threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
