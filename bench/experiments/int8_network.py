"""int8 regulariser at 64 px: NNCF post-training quantisation of an image package's U-Net on
OpenVINO, against the bf16 network it replaces: time per call and PSNR of the whole solve.

Calibration: the regulariser inputs (x, sigma, stage) of fast-schedule solves on the first
--calibration validation photos, every task at sigma_y 0 and 0.05; --subset of them, drawn at
random, go to ``nncf.quantize`` (preset MIXED: symmetric weights, asymmetric activations; bias
correction off, as NNCF's fails on this graph). Scored on the next --images validation photos,
one sample each, every task at sigma_y 0, 0.01 and 0.05, the same seeds for both networks.

Needs ``pip install nncf`` (not a dependency of the SDK).

    python bench/experiments/make_validation_folder.py data/photos/held-out val
    python bench/experiments/int8_network.py --photos val/held-out
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

TASKS = ("gaussian_blur", "anisotropic_blur", "motion_blur", "sr_x4", "sr_x8") + tuple(
    f"inpainting_{p}" for p in (20, 40, 60)
)
SHAPE = (1, 3, 64, 64)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/experiments/int8_network.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--package", default="samples/models/image-small", help="an image model package")
    p.add_argument("--photos", required=True, help="validation photos (make_validation_folder.py)")
    p.add_argument("--calibration", type=int, default=12, help="photos whose solves calibrate (default 12)")
    p.add_argument("--images", type=int, default=22, help="photos scored after them (default 22)")
    p.add_argument("--subset", type=int, default=600, help="calibration inputs given to NNCF (default 600)")
    return p.parse_args(argv)


def calibration_inputs(solver, cases, subset: int) -> list[dict]:
    """The regulariser's inputs during the solves of ``cases``, ``subset`` of them at random."""
    backend, seen = solver.backend, []
    plain = backend.regularize

    def record(x, sigma, k):
        seen.extend((x[i : i + 1].copy(), sigma, k) for i in range(x.shape[0]))
        return plain(x, sigma, k)

    backend.regularize = record
    try:
        for c in cases:
            solver.solve(c.y, c.op, seed=c.seeds, noise_std=list(c.noise_std))
    finally:
        backend.regularize = plain
    pick = np.random.default_rng(0).choice(len(seen), size=min(subset, len(seen)), replace=False)
    return [{"x": seen[i][0], "sigma": np.float32([seen[i][1]]), "stage": np.int64([seen[i][2]])} for i in pick]


def per_call_ms(request, feeds: dict, calls: int = 200) -> float:
    for _ in range(20):
        request.infer(feeds)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        request.infer(feeds)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def score(solver, cases) -> dict[str, float]:
    """Mean PSNR per task@noise, one image at a time (the int8 network is compiled for batch 1)."""
    from diffunfold.metrics import psnr

    out = {}
    for c in cases:
        got = [
            solver.solve(c.y[i : i + 1], c.op, seed=c.seeds[i], noise_std=c.noise_std[i]).images
            for i in range(len(c.seeds))
        ]
        out[f"{c.task.key}@{c.level:g}"] = float(np.mean(psnr(np.concatenate(got), c.x, 1.0)))
    return out


def main(argv=None) -> int:
    a = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import nncf
    from quality_harness.cases import make_case
    from quality_harness.tasks import TASK_BY_KEY, Settings

    from diffunfold.data.held_out import held_out_photos
    from diffunfold.runtime import Solver

    solver = Solver.load(a.package, backend="openvino")
    backend = solver.backend
    names, x = held_out_photos(a.photos, 64, a.calibration + a.images)
    s = Settings(size=64, images=len(names))
    n = a.calibration
    calib = [make_case(TASK_BY_KEY[t], lv, names[:n], x[:n], s, 0, 15) for t in TASKS for lv in (0.0, 0.05)]
    data = calibration_inputs(solver, calib, a.subset)
    model = backend._models[0].clone()  # the graph the backend compiles, in its attention and norm forms
    model.reshape({p.get_any_name(): (list(SHAPE) if p.get_any_name() == "x" else [1]) for p in model.inputs})
    adv = nncf.AdvancedQuantizationParameters(disable_bias_correction=True)
    quantized = nncf.quantize(model, nncf.Dataset(data), preset=nncf.QuantizationPreset.MIXED, advanced_parameters=adv)
    int8 = backend.core.compile_model(quantized, "CPU", backend.config).create_infer_request()
    bf16 = backend._request(0, SHAPE)
    ms = [(per_call_ms(bf16, data[0]), per_call_ms(int8, data[0])) for _ in range(3)]
    cases = [make_case(TASK_BY_KEY[t], lv, names[n:], x[n:], s, 0, 15) for t in TASKS for lv in (0.0, 0.01, 0.05)]
    results = {"bf16": score(solver, cases)}
    backend._compiled[(0, SHAPE, backend.precision)] = int8  # the solver now calls the int8 network
    results["int8"] = score(solver, cases)
    print(" ".join(sys.argv))
    print(f"per call, ms (3 rounds): bf16 {[round(b, 2) for b, _ in ms]}, int8 {[round(i, 2) for _, i in ms]}")
    print("| cell | bf16 PSNR | int8 - bf16 |\n|---|---|---|")
    diffs = []
    for cell, ref in results["bf16"].items():
        diffs.append(results["int8"][cell] - ref)
        print(f"| {cell} | {ref:.2f} | {diffs[-1]:+.2f} |")
    print(f"| worst / mean | | {min(diffs):+.2f} / {np.mean(diffs):+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
