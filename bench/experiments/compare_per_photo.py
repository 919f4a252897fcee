"""Per-photo view of a quality run on many photos: write its per-photo.json and, given the
per-photo.json of an earlier run on the same photos, a table of the two per cell.

    python bench/experiments/compare_per_photo.py RUN/quality-image-small.json OUT.json [EARLIER per-photo.json]

For each task and noise level: the mean against the best baseline, how many photos are ahead,
the median photo's gain and the three worst photos; with an earlier run, its mean beside.
The results: bench/results/real-data/image-small-all-held-out/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def per_photo(full: dict) -> dict:
    rows, cells = full["rows"], []
    for s in full["summary"]:
        model = next(
            r for r in rows if r["task"] == s["task"] and r["noise"] == s["noise"] and r["method"] == "model_mean"
        )
        base = next(
            r for r in rows if r["task"] == s["task"] and r["noise"] == s["noise"] and r["method"] == s["best_baseline"]
        )
        cells.append(
            {
                "task": s["task"],
                "noise": s["noise"],
                "best_baseline": s["best_baseline"],
                "images": [r["image"] for r in model["per_image"]],
                "model_psnr": [round(r["psnr"], 3) for r in model["per_image"]],
                "baseline_psnr": [round(r["psnr"], 3) for r in base["per_image"]],
            }
        )
    meta = {k: full["meta"][k] for k in ("command", "date", "machine", "wall_seconds", "seed")}
    return {"meta": meta, "summary": full["summary"], "per_image": cells}


def table(now: dict, before: dict | None) -> str:
    lines = [
        "| task | noise | mean | best baseline | gain | photos ahead | median photo | worst photos |"
        + (" earlier mean | change |" if before else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if before else ""),
    ]
    for cell in now["per_image"]:
        gain = np.array(cell["model_psnr"]) - np.array(cell["baseline_psnr"])
        worst = sorted(zip(gain, cell["images"]))[:3]
        m, b = np.mean(cell["model_psnr"]), np.mean(cell["baseline_psnr"])
        row = (
            f"| {cell['task']} | {cell['noise']:g} | {m:.2f} | {cell['best_baseline']} {b:.2f} | {m - b:+.2f} "
            f"| {int((gain > 0).sum())} of {len(gain)} | {np.median(gain):+.2f} | "
            + ", ".join(f"{n.rsplit('_', 1)[-1]} {g:+.2f}" for g, n in worst)
            + " |"
        )
        if before:
            old = next(c for c in before["per_image"] if c["task"] == cell["task"] and c["noise"] == cell["noise"])
            assert old["images"] == cell["images"], "the two runs scored different photos"
            row += f" {np.mean(old['model_psnr']):.2f} | {m - np.mean(old['model_psnr']):+.2f} |"
        lines.append(row)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/experiments/compare_per_photo.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="a quality-<package>.json of bench/quality.py")
    p.add_argument("out", help="the per-photo JSON to write")
    p.add_argument("earlier", nargs="?", help="the per-photo JSON of an earlier run on the same photos")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    with open(a.run) as f:
        now = per_photo(json.load(f))
    with open(a.out, "w") as f:
        json.dump(now, f)
    before = None
    if a.earlier:
        with open(a.earlier) as f:
            before = json.load(f)
    print(table(now, before))
    return 0


if __name__ == "__main__":
    sys.exit(main())
