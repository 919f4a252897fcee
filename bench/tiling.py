"""The tiled regulariser (``diffunfold.runtime.tiling``): agreement with the untiled one, its time
overhead, and the peak memory of a restore at 512, 1024 and 2048 px.

Agreement: held-out photos at ``--size`` (small enough that the untiled network
fits), measured with each task plus noise 0.05, restored untiled, with the automatic tiles and
with tiles of the training size, all from the same seed; PSNR of each tiled result against the
untiled one, and of each against the ground truth. The three solves of a case run back to
back (interleaved), so the time ratios share the machine's load; the load average is recorded.

Overhead: one regulariser call on an N x N image, untiled and with the automatic tiles,
interleaved, the fastest of ``--repeats`` each (the minimum is what other load cannot inflate).

Peak memory: ``diffunfold restore`` (simulate, Gaussian blur, ``--steps 1``: the memory does
not depend on the steps) on a photo resized to N x N, each in its own process; its peak
resident set (``ru_maxrss`` from ``wait4``) next to the solver's own estimate
(``tiling.check_memory``) and the bound of 4 GB at 2048 px.

    python bench/tiling.py                       # both parts; results in bench/results/
    python bench/tiling.py --part memory --memory-sizes 512 1024
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "samples" / "models" / "image-small"
TASKS = (("gaussian_blur", {"sigma": 2.0}), ("sr", {"factor": 4}), ("inpainting", {"missing": 0.4}))
LIMIT_2048 = 4 * 2**30


def agreement(args) -> list[dict]:
    from diffunfold.data.images import bundled_image
    from diffunfold.metrics import psnr
    from diffunfold.physics import make_operator
    from diffunfold.runtime import Solver
    from diffunfold.runtime.tiling import train_size

    solver = Solver.load(args.package, backend="onnxruntime", threads=args.threads)
    small = train_size(solver.package.manifest)
    rows = []
    for name in args.images:
        x = bundled_image(name, size=args.size)[None]
        for task, params in TASKS:
            op = make_operator(task, (args.size, args.size), **params)
            y = op.measure(x, 0.05, seed=0)
            out, seconds, how = {}, {}, {}
            for tile in (None, "auto", small):
                t0 = time.perf_counter()
                sol = solver.solve(y, op, steps=args.steps, seed=0, noise_std=0.05, tile=tile)
                seconds[str(tile)], out[str(tile)], how[str(tile)] = time.perf_counter() - t0, sol.images, sol.tiling
            row = {
                "image": name,
                "task": task,
                "size": args.size,
                "untiled_psnr_truth": psnr(out["None"][0], x[0], 1.0),
                "untiled_s": seconds["None"],
            }
            for key, label in (("auto", "auto"), (str(small), "train")):
                row[f"{label}_tiling"] = how[key]
                row[f"{label}_psnr_vs_untiled"] = psnr(out[key][0], out["None"][0], 1.0)
                row[f"{label}_psnr_truth"] = psnr(out[key][0], x[0], 1.0)
                row[f"{label}_time_ratio"] = seconds[key] / seconds["None"]
            rows.append(row)
            print(row, flush=True)
    return rows


def overhead(args) -> list[dict]:
    """One regulariser call (the tiling's whole cost is there), untiled against the automatic
    tiles, interleaved, the fastest of ``--repeats``: the minimum is what load cannot inflate."""
    from diffunfold.runtime import Solver, tiling

    solver = Solver.load(args.package, backend="onnxruntime", threads=args.threads)
    rows = []
    for n in args.overhead_sizes:
        x = np.random.default_rng(0).standard_normal((1, 3, n, n)).astype(np.float32)
        plans = {"untiled": tiling.TilePlan(None), "auto": solver.plan((n, n))}
        best = {k: float("inf") for k in plans}
        for _ in range(args.repeats):
            for key, plan in plans.items():
                t0 = time.perf_counter()
                tiling.regularize(lambda v: solver.backend.regularize(v, 1.0, 0), x, plan, 8, np)
                best[key] = min(best[key], time.perf_counter() - t0)
        rows.append(
            {
                "size": n,
                "untiled_s": best["untiled"],
                "tiled_s": best["auto"],
                "ratio": best["auto"] / best["untiled"],
                "tiling": plans["auto"].describe(),
            }
        )
        print(rows[-1], flush=True)
    return rows


def restore_command(args, src: Path, out: Path) -> list[str]:
    """``diffunfold restore`` of one photo, one step, in a process of its own (its peak RSS is the one measured)."""
    return [
        sys.executable,
        "-m",
        "diffunfold",
        "restore",
        str(args.package),
        str(src),
        "--task",
        "gaussian_blur",
        "sigma=2",
        "--steps",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]


def peak_memory(args) -> list[dict]:
    from PIL import Image

    from diffunfold.data.images import bundled_image
    from diffunfold.package import ModelPackage
    from diffunfold.runtime import tiling

    pkg = ModelPackage.open(args.package)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Image.fromarray(np.round(np.moveaxis(bundled_image("astronaut"), 0, -1) * 255).astype(np.uint8))
        for n in args.memory_sizes:
            src = Path(tmp) / f"photo{n}.png"
            base.resize((n, n), Image.Resampling.BICUBIC).save(src)
            cmd = restore_command(args, src, Path(tmp) / f"out{n}")
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                cmd + ["--threads", str(args.threads)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            out = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            plan = tiling.plan_tiles(pkg.settings, pkg.manifest, "auto", (n, n), pkg.size_multiple, "cpu", None)
            estimate = tiling.check_memory(
                pkg.settings, plan, 1, pkg.space.model_channels, (n, n), pkg.size_multiple, None
            )
            backend = next((line for line in out.splitlines() if line.startswith("backend: ")), "backend: ?")
            row = {
                "size": n,
                "exit": proc.returncode,
                "peak_rss_mb": usage.ru_maxrss / 1024,
                "backend": backend.split(" [")[0][len("backend: ") :],
                "estimate_mb": estimate / 2**20,
                "tiling": plan.describe(),
                "seconds": time.perf_counter() - t0,
            }
            if proc.returncode != 0:
                row["output"] = out[-2000:]
            rows.append(row)
            print(row, flush=True)
    return rows


def markdown(agree: list[dict], memory: list[dict], cost: list[dict] = ()) -> str:
    lines = []
    if cost:
        lines += [
            "## Time of one regulariser call (ONNX Runtime, fastest of the repeats)",
            "",
            "| size | untiled | tiled | tiled / untiled | tiling |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['size']}x{r['size']} | {r['untiled_s']:.3f} s | {r['tiled_s']:.3f} s | {r['ratio']:.2f}x | "
            f"{r['tiling']} |"
            for r in cost
        ] + [""]
    if agree:
        lines += [
            "## Tiled against untiled",
            "",
            "| image | task | untiled PSNR | auto: vs untiled | auto PSNR | auto time | train-size tiles: "
            "vs untiled | their PSNR | their time |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in agree:
            lines.append(
                f"| {r['image']} | {r['task']} | {r['untiled_psnr_truth']:.2f} | {r['auto_psnr_vs_untiled']:.2f} | "
                f"{r['auto_psnr_truth']:.2f} | {r['auto_time_ratio']:.2f}x | {r['train_psnr_vs_untiled']:.2f} | "
                f"{r['train_psnr_truth']:.2f} | {r['train_time_ratio']:.2f}x |"
            )
        lines += [
            "",
            f"auto: {agree[0]['auto_tiling']}; train-size: {agree[0]['train_tiling']}. PSNR in dB (data "
            "range 1); 'vs untiled' compares the two restorations, the others the ground truth; time: "
            "seconds of the tiled solve over the untiled one, run back to back.",
            "",
        ]
    if memory:
        lines += [
            "## Peak memory of `diffunfold restore` (CPU, --steps 1)",
            "",
            "| size | peak RSS | solver's estimate | tiling | backend | exit | s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in memory:
            lines.append(
                f"| {r['size']}x{r['size']} | {r['peak_rss_mb']:.0f} MB | {r['estimate_mb']:.0f} MB | "
                f"{r['tiling']} | {r['backend']} | {r['exit']} | {r['seconds']:.0f} |"
            )
        big = [r for r in memory if r["size"] == 2048]
        if big:
            ok = big[0]["exit"] == 0 and big[0]["peak_rss_mb"] * 2**20 < LIMIT_2048
            lines += ["", f"2048x2048 under 4 GB: {'yes' if ok else 'NO'}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", type=Path, default=PACKAGE)
    p.add_argument("--part", choices=["all", "agreement", "overhead", "memory"], default="all")
    p.add_argument("--images", nargs="+", default=["astronaut", "coffee"])
    p.add_argument("--size", type=int, default=192, help="agreement: image side (default 192)")
    p.add_argument("--steps", type=int, default=18, help="agreement: sampler steps (default 18)")
    p.add_argument("--memory-sizes", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--overhead-sizes", type=int, nargs="+", default=[192, 256, 384])
    p.add_argument("--repeats", type=int, default=5, help="overhead: calls per variant (default 5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    info = machine_info()
    agree = agreement(args) if args.part in ("all", "agreement") else []
    cost = overhead(args) if args.part in ("all", "overhead") else []
    memory = peak_memory(args) if args.part in ("all", "memory") else []
    info["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    md = markdown(agree, memory, cost)
    print(md)
    if not args.no_write:
        name = "tiling" if args.part == "all" else f"tiling-{args.part}"
        print(
            "wrote",
            write_results(
                name,
                info,
                {k: str(v) for k, v in vars(args).items()},
                {"agreement": agree, "overhead": cost, "memory": memory},
                md,
                title="Tiled regulariser",
            ),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
