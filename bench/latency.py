"""Edge latency: the default before against the few-call schedule and its tiles, in one run.

Four variants of one image package, each a single posterior sample as the API's default:

    full, 128 tiles   EDM's 18 steps from noise on 128 px tiles above 128 px (the default before)
    fast, whole       the fast schedule (diffunfold.fast_schedule) on the whole image
    fast, 128 tiles   the fast schedule on 128 px tiles (overlap 32)
    fast, auto        the fast schedule with tile="auto": whole up to the package's whole side,
                      its recorded tiles above (the default now; image-small: 72 px, overlap 8)

Part 1 times them, interleaved round by round, on one held-out photo per size (batch 1,
Gaussian blur sigma 2, sigma_y 0.01, where image-small's fast schedule runs its stages for noisy
images up to 128 px: 18 calls at 64 px, 22 at 256): median seconds per image, network calls, the tiling. The
machine's GEMM rate (bench/matmul_rate.py, the backend's precision) is measured just before and
just after: on a virtual machine it moves by tens of percent from hour to hour, and the short
64 px calls follow it, so an absolute time means little without it.
Part 2 scores them (PSNR, mean over the held-out photos) on every task and noise level asked at
--quality-size (64 px: one tile, so only the schedules differ there and only "full, 128 tiles"
and "fast, auto" are scored; --quality-size 256 scores all four).

    python bench/latency.py --photos data/photos/held-out
    python bench/latency.py --photos data/photos/held-out --sizes 64 --quality-size 0   # timing only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import matmul_rate  # noqa: E402
from common import markdown_table  # noqa: E402
from machine import LoadWatch, add_output_arguments, machine_info, record  # noqa: E402

VARIANTS = {
    "full, 128 tiles": {"schedule": "full", "tile": 128},
    "fast, whole": {"schedule": "fast", "tile": None},
    "fast, 128 tiles": {"schedule": "fast", "tile": 128},
    "fast, auto": {"schedule": "fast", "tile": "auto"},
}
BASE = "full, 128 tiles"
TASKS = ("gaussian_blur", "anisotropic_blur", "motion_blur", "sr_x4", "sr_x8", "inpainting_20", "inpainting_40")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench/latency.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--package", default="samples/models/image-small", help="an image model package")
    ap.add_argument("--photos", required=True, help="held-out photos (held-out/ of `diffunfold data photos`)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="timed sizes in px (default 64 256)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per size, the median is kept (default 5)")
    ap.add_argument("--images", type=int, default=5, help="held-out photos per quality cell (default 5)")
    ap.add_argument("--quality-size", type=int, default=64, help="size of the quality part, 0 to skip (default 64)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), help="quality harness task keys")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.01, 0.05], help="sigma_y (default 0 0.01 0.05)")
    ap.add_argument("--backend", default="auto", help="runtime backend (default auto: OpenVINO bf16 where it runs)")
    add_output_arguments(ap)
    return ap.parse_args(argv)


def timing_rows(solver, photos: str, sizes: list[int], repeats: int) -> list[dict]:
    """Median seconds per image of each variant at each size, interleaved round by round."""
    from diffunfold.data.held_out import held_out_photos
    from diffunfold.physics import make_operator

    rows = []
    for size in sizes:
        _, x = held_out_photos(photos, size, 1)
        op = make_operator("gaussian_blur", (size, size), sigma=2.0)
        y = op.measure(x, noise_std=0.01, seed=0).astype(np.float32)
        runs = {name: [] for name in VARIANTS}
        for name, kw in VARIANTS.items():  # warm-up: compiled networks, FFT plans
            runs[name].append(solver.solve(y, op, seed=0, noise_std=0.01, **kw))
        times = {name: [] for name in VARIANTS}
        for _ in range(repeats):
            for name, kw in VARIANTS.items():
                t0 = time.perf_counter()
                runs[name].append(solver.solve(y, op, seed=0, noise_std=0.01, **kw))
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(times[BASE])
        for name in VARIANTS:
            sol, s = runs[name][-1], statistics.median(times[name])
            rows.append(_timing_row(size, name, sol, s, base))
            print(f"{size} px {name}: {s:.3f} s, {sol.timing.network_calls} calls, {sol.tiling}", flush=True)
    return rows


def _timing_row(size: int, name: str, sol, seconds: float, base: float) -> dict:
    return {
        "size": size,
        "variant": name,
        "network_calls": sol.timing.network_calls,
        "s_per_image": seconds,
        "network_s": sol.timing.network,
        "physics_s": sol.timing.physics,
        "vs_before": seconds / base,
        "tiling": sol.tiling,
    }


def quality_rows(solver, a: argparse.Namespace) -> list[dict]:
    """Mean PSNR over the held-out photos per (task, noise, variant) at ``a.quality_size``."""
    from quality_harness.cases import make_case
    from quality_harness.tasks import TASK_BY_KEY, Settings

    from diffunfold.data.held_out import held_out_photos
    from diffunfold.metrics import psnr

    names, x = held_out_photos(a.photos, a.quality_size, a.images)
    s = Settings(size=a.quality_size, images=len(names))
    small = {BASE, "fast, auto"}  # at most one tile: the tilings agree, only the schedules differ
    variants = {k: v for k, v in VARIANTS.items() if a.quality_size > 128 or k in small}
    rows = []
    for key in a.tasks:
        for level in a.noise:
            case = make_case(TASK_BY_KEY[key], level, names, x, s, 0, 15)
            row = {"task": key, "noise": level}
            for name, kw in variants.items():
                sol = solver.solve(case.y, case.op, seed=case.seeds, noise_std=list(case.noise_std), **kw)
                row[name] = float(np.mean(psnr(np.asarray(sol.images), case.x, 1.0)))
            print(f"{key} @ {level:g}: " + ", ".join(f"{n} {row[n]:.2f}" for n in variants), flush=True)
            rows.append(row)
    return rows


def quality_markdown(rows: list[dict], a) -> str:
    """The reference's PSNR per cell and each other variant's change from it, then the worst cell."""
    names = [k for k in rows[0] if k not in ("task", "noise")]
    ref = BASE if BASE in names else names[0]
    others = [n for n in names if n != ref]
    table = [
        {
            "task": r["task"],
            "noise": f"{r['noise']:g}",
            ref: f"{r[ref]:.2f}",
            **{n: f"{r[n] - r[ref]:+.2f}" for n in others},
        }
        for r in rows
    ]
    worst = ", ".join(f"{n} {min(r[n] - r[ref] for r in rows):+.2f} dB" for n in others)
    mean = ", ".join(f"{n} {np.mean([r[n] - r[ref] for r in rows]):+.2f} dB" for n in others)
    return (
        f"## Quality: PSNR (dB), mean over {a.images} held-out photos at {a.quality_size} px, one sample\n\n"
        f"The other variants as the change from {ref}.\n\n"
        + markdown_table(table)
        + f"\n\nWorst cell: {worst}. Mean over the cells: {mean}."
    )


def main(argv=None) -> int:
    a = parse_args(argv)
    from diffunfold.runtime import Solver

    watch, info = LoadWatch(), machine_info()
    solver = Solver.load(a.package, backend=a.backend)
    print(f"{a.package} on {solver.backend_name}; {info['cpu']}, {info['cores']} cores")
    precision = "bf16" if "bf16" in solver.backend_name else "fp32"
    rates = [matmul_rate.measure(precision, sizes=(1024,), repeats=3)]
    timing = timing_rows(solver, a.photos, a.sizes, a.repeats)
    rates.append(matmul_rate.measure(precision, sizes=(1024,), repeats=3))
    md = "## Seconds per image (one sample, batch 1, median of the rounds)\n\n" + markdown_table(timing)
    md += f"\n\nThe machine's {precision} GEMM rate (n = 1024, best library) just before the timing: "
    md += f"{matmul_rate.describe(rates[0])}; just after: {rates[1]['gflops']:.0f} GFLOP/s."
    quality = quality_rows(solver, a) if a.quality_size else []
    if quality:
        md += "\n\n" + quality_markdown(quality, a)
    md += f"\n\nBackend: {solver.backend_name}."
    results = {"timing": timing, "gemm_rates": rates, "quality": quality}
    record("latency", watch, info, a, results, md, "Edge latency: calls, seconds, PSNR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
