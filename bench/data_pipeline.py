"""What one training batch of photos costs the CPU, with and without ``data.cache_images``.

A GPU trains a small model faster than one DataLoader worker can prepare its batches, so the
data pipeline's CPU time per image decides how many workers a GPU run needs. This times
``TrainingBatches`` items (native crops, ``whole_fraction`` 0.5, the image-small task mix,
the physics and noise included) on a photo folder, the two variants interleaved over
``--rounds`` rounds of ``--steps`` batches; a variant's time is the median over rounds. Both
variants draw the same batches (the steps of round r), so they do the same work apart from
decoding. The cached variant is warmed first: every photo decoded once, as a worker's cache
is after its first pass.

    python bench/data_pipeline.py data/photos/train                 # batch 64, 5 rounds x 4 batches
    python bench/data_pipeline.py DIR --batch 8 --rounds 2 --no-write

Results: results/data_pipeline-<machine>.md and .json (not written on a busy machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from diffunfold.training.config import load_config
from diffunfold.training.data import TrainingBatches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import LoadWatch, add_output_arguments, machine_info, record  # noqa: E402

VARIANTS = ("decode per crop", "cache_images")


def batches(folder: str, batch: int, cache: bool) -> TrainingBatches:
    cfg = load_config("small")
    d = cfg.data
    d.source, d.path, d.val_path = "folder", folder, folder
    d.native_crops, d.whole_fraction, d.cache_images = True, 0.5, cache
    d.tasks = ("gaussian_blur", "anisotropic_blur", "sr", "sr", "inpainting", "inpainting", "inpainting")
    d.sr_factors, d.inpainting_missing = (4, 8, 8), (0.3, 0.8)
    cfg.train.batch_size = batch
    return TrainingBatches(cfg)


def measure(folder: str, batch: int, rounds: int, steps: int) -> dict[str, float]:
    """Median over rounds of the seconds per image of each variant."""
    sources = {name: batches(folder, batch, cache=name == "cache_images") for name in VARIANTS}
    cached = sources["cache_images"]
    images = cached.source.dataset  # warm the cache: every photo decoded once
    for i in range(len(images)):
        images[i]
    per_round: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for name in order:
            start = time.perf_counter()
            for step in range(r * steps, (r + 1) * steps):
                sources[name][step]
            per_round[name].append((time.perf_counter() - start) / (steps * batch))
    return {name: statistics.median(v) for name, v in per_round.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a folder of photos, e.g. data/photos/train of `diffunfold data photos`")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="batches per variant per round")
    add_output_arguments(p)
    args = p.parse_args(argv)
    watch, info = LoadWatch(), machine_info()
    t = measure(args.folder, args.batch, args.rounds, args.steps)
    base = t[VARIANTS[0]]
    rows = [{"variant": name, "s_per_image": t[name], "ratio": t[name] / base} for name in VARIANTS]
    md = "\n".join(
        [
            "| variant | ms per image | ms per batch | ratio |",
            "|---|---|---|---|",
            *(
                f"| {r['variant']} | {r['s_per_image'] * 1e3:.2f} | {r['s_per_image'] * args.batch * 1e3:.0f} "
                f"| {r['ratio']:.3f} |"
                for r in rows
            ),
        ]
    )
    record(
        "data_pipeline", watch, info, args, rows, md, f"Data pipeline: a training batch of photos, batch {args.batch}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
