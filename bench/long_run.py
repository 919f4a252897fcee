"""Resident memory over many back-to-back ``Solver.solve`` calls: does a long run leak?

One solver, ``--count`` solves (default 1,000) of a held-out photo at ``--size`` (default 64)
with ``--steps`` sampler steps (default 2: the memory does not depend on the steps), each
with its own seed, alternating the whole image and tiles of ``--tile`` (default 32, 9 tiles
a solve) so both paths of the regulariser run. The resident set (``/proc/self/statm``) is
read after every solve. The bound: after the first ``--warmup`` solves (default 100: the
network runtime's arena and caches settle), resident memory grows by less than
``--bound-mb`` (default 50 MB). Not a timed test: the seconds are recorded for information.

    python bench/long_run.py                       # results in bench/results/long_run-<machine>.md
    python bench/long_run.py --count 200 --no-write
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "samples" / "models" / "image-small"


def rss_mb() -> float:
    """The resident set of this process now, in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(args) -> list[dict]:
    from diffunfold.data.images import bundled_image
    from diffunfold.physics import make_operator
    from diffunfold.runtime import Solver

    solver = Solver.load(args.package, backend=args.backend, threads=args.threads)
    x = bundled_image("astronaut", size=args.size)[None]
    op = make_operator("gaussian_blur", (args.size, args.size), sigma=2.0)
    rows, t0 = [], time.perf_counter()
    for i in range(args.count):
        y = op.measure(x, 0.05, seed=i)
        sol = solver.solve(y, op, steps=args.steps, seed=i, noise_std=0.05, tile=args.tile if i % 2 else None)
        rows.append({"solve": i + 1, "rss_mb": rss_mb(), "seconds": time.perf_counter() - t0, "tiling": sol.tiling})
        if (i + 1) % max(args.count // 20, 1) == 0:
            print(f"{i + 1}/{args.count}: {rows[-1]['rss_mb']:.1f} MB, {rows[-1]['seconds']:.0f} s", flush=True)
    return rows


def summary(rows: list[dict], args) -> tuple[str, dict]:
    after = [r["rss_mb"] for r in rows[args.warmup - 1 :]] if len(rows) >= args.warmup else [r["rss_mb"] for r in rows]
    growth = max(after) - after[0]
    verdict = {
        "backend": args.backend,
        "rss_after_warmup_mb": after[0],
        "rss_max_mb": max(after),
        "rss_final_mb": rows[-1]["rss_mb"],
        "growth_after_warmup_mb": growth,
        "bound_mb": args.bound_mb,
        "within_bound": growth < args.bound_mb,
        "seconds": rows[-1]["seconds"],
    }
    marks = sorted({0, args.warmup - 1, len(rows) // 4, len(rows) // 2, 3 * len(rows) // 4, len(rows) - 1})
    lines = ["| solves | resident MB | s |", "|---|---|---|"]
    lines += [
        f"| {rows[i]['solve']} | {rows[i]['rss_mb']:.1f} | {rows[i]['seconds']:.0f} |" for i in marks if i < len(rows)
    ]
    lines += [
        "",
        f"{len(rows)} solves ({rows[0]['tiling']} and {rows[1]['tiling'] if len(rows) > 1 else '-'}, "
        f"alternating): resident memory {after[0]:.1f} MB after {args.warmup} solves, at most {max(after):.1f} MB "
        f"after that, {rows[-1]['rss_mb']:.1f} MB at the end: growth {growth:.1f} MB against a bound of "
        f"{args.bound_mb:g} MB: {'within' if verdict['within_bound'] else 'OVER'} the bound.",
    ]
    return "\n".join(lines), verdict


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", type=Path, default=PACKAGE)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--tile", type=int, default=32)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--bound-mb", type=float, default=50.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    info = machine_info()
    rows = run(args)
    info["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    md, verdict = summary(rows, args)
    print(md)
    if not args.no_write:
        print(
            "wrote",
            write_results(
                "long_run",
                info,
                {k: str(v) for k, v in vars(args).items()},
                {"summary": verdict, "rss": rows},
                md,
                title="1,000 back-to-back solves",
            ),
        )
    return 0 if verdict["within_bound"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
