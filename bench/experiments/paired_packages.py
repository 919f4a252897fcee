"""Paired differences between packages scored in one ``bench/quality.py`` run: the same photos,
measurements and seeds, so the per-photo differences carry the comparison, not the means alone.

    python bench/experiments/paired_packages.py RUN/quality-edm.json RUN/quality-vp.json ... [--across A.json B.json]

For each task and noise level, each package against the first: the mean per-photo PSNR
difference, its standard error (sample standard deviation over sqrt(n)), and on how many photos
it is ahead. ``--across``: the same per-photo pairing between two runs of one package (say two
samplers), when the runs share the photos and seeds. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def model_cells(path: str) -> dict[tuple[str, float], dict[tuple[str, int | None], float]]:
    """``(task, noise) -> {(image, seed): psnr}`` of the posterior-mean rows of one result file."""
    rows = json.loads(Path(path).read_text())["rows"]
    return {
        (r["task"], r["noise"]): {(i["image"], i.get("seed")): i["psnr"] for i in r["per_image"]}
        for r in rows
        if r["method"] == "model_mean"
    }


def paired(ref: dict, other: dict) -> tuple[float, float, int, int]:
    """Mean difference ``other - ref`` over the shared photos, its standard error, wins, count."""
    keys = sorted(set(ref) & set(other))
    if len(keys) < 2:
        raise SystemExit("fewer than two shared photos: were the runs made on the same photos and seeds?")
    d = np.array([other[k] - ref[k] for k in keys])
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))), int((d > 0).sum()), len(d)


def label(path: str) -> str:
    return Path(path).stem.removeprefix("quality-")


def table(files: list[str], labels: list[str]) -> str:
    cells = [model_cells(f) for f in files]
    lines = [
        f"| task | noise | {labels[0]} (dB) | " + " | ".join(f"{n} - {labels[0]}" for n in labels[1:]) + " |",
        "|---|---|---|" + "---|" * (len(files) - 1),
    ]
    for key, ref in cells[0].items():
        row = [key[0], f"{key[1]:g}", f"{np.mean(list(ref.values())):.2f}"]
        for other in cells[1:]:
            mean, se, wins, n = paired(ref, other[key])
            row.append(f"{mean:+.2f} +- {se:.2f} ({wins}/{n} ahead)")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench/experiments/paired_packages.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", nargs="*", help="quality-<package>.json files of one run (the first is the reference)")
    p.add_argument("--across", nargs=2, metavar="JSON", help="one package's results from two runs instead")
    a = p.parse_args(argv)
    if a.across:
        files, labels = a.across, [str(Path(f).parent.name) for f in a.across]
    elif len(a.results) >= 2:
        files, labels = a.results, [label(f) for f in a.results]
    else:
        p.error("give two or more result files, or --across A B")
    print(table(files, labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
