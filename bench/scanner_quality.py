"""The quality part of ``bench/scanner.py``: the simulated scans, every package (start and
sampler) and the oracle baselines on them, and the tables."""

from __future__ import annotations

import time

import numpy as np
from common import markdown_table
from scanner_baselines import oracle_l1, oracle_sense
from scanner_metrics import SliceScores

from diffunfold import edm
from diffunfold.physics.mri import MultiCoilMRI, mri_mask
from diffunfold.runtime.solver import Solver
from diffunfold.scanner import StartSettings, prepare_kspace
from diffunfold.scanner.simulate import correlated_noise, random_noise_covariance
from diffunfold.scanner.start import sense_start

MASKS = (("gaussian1d", 4.0), ("gaussian2d", 8.0))  # the default --masks: the trained one and an unseen one
STARTS = {  # --start: (where it starts and what comes back, options of the solve)
    "sense": (StartSettings(), {}),  # the default
    "sense-sample": (StartSettings(readout="sample"), {}),  # a sample for every mask
    # a sample, the tail of the 18-step schedule for every mask (the default before 2026-12-05)
    "sense-18": (StartSettings(readout="sample"), {"steps": 18}),
    "noise": (StartSettings(method="noise"), {}),  # the full schedule from pure noise
}


def scan(item: dict, kind: str, acc: float, level: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multi-coil k-space of a slice through its true maps, noise of std ``level`` (the image is
    99th-percentile normalised) correlated between coils, and the mask."""
    size = item["image"].shape[-1]
    mask = mri_mask(kind, (size, size), acc, seed=1)
    y = np.asarray(MultiCoilMRI(item["coil_maps"], mask).A(item["image"][None]))[0]
    rng = np.random.default_rng(seed)
    psi = random_noise_covariance(y.shape[0], rng)
    return (y + level * correlated_noise(y.shape, psi, rng) * mask).astype(np.complex64), mask


def quality_rows(
    solvers: dict[str, Solver],
    items: list[dict],
    levels,
    seed: int,
    starts: tuple[str, ...] = ("sense",),
    known: dict | None = None,
    others: dict | None = None,
    map_kinds: tuple[str, ...] = ("espirit", "true"),
    scores: SliceScores | None = None,
    masks=MASKS,
    samplers: tuple[str | None, ...] = (None,),
) -> list[dict]:
    """Every package (and every start of ``STARTS`` and sampler: None is the package's own) on the
    same scans and prepared problems, scored by ``scores`` (PSNR and SSIM by default); the
    baselines once per scan (or from ``known``)."""
    scores = scores or SliceScores()
    keys = variant_keys(list(solvers), starts, samplers)
    rows = []
    for kind, acc in masks:
        for level in levels:
            for maps in map_kinds:
                for i, item in enumerate(items):
                    y, mask = scan(item, kind, acc, level, seed + i)
                    given = item["coil_maps"] if maps == "true" else None
                    p = prepare_kspace(y, mask, coil_maps=given)
                    truth = item["image"][0]
                    row = {
                        "mask": f"{kind} {acc:g}x",
                        "noise": level,
                        "maps": maps,
                        "slice": item["name"],
                        "noise_estimated": p.noise_std * p.scale,
                        "map_std": p.map_std * p.scale,
                    }
                    for (name, start, sampler), key in keys.items():
                        solver = solvers[name]
                        t0 = time.perf_counter()
                        settings, options = STARTS[start]
                        options = {**options, **sense_start(p, settings, steps=options.get("steps"))}
                        if sampler is not None:
                            options["sampler"] = sampler
                        sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=seed + i, **options)
                        row.update({key + k: v for k, v in scores(np.asarray(sol.images)[0, 0], truth).items()})
                        row[f"{key} s"] = time.perf_counter() - t0
                        row[f"{key} calls"] = sol.calls_per_sample
                    for name, other in (others or {}).items():  # zero-shot solvers, learned baselines
                        t0 = time.perf_counter()
                        image = other.run(p, seed + i)[0, 0]
                        row[f"{name} s"] = time.perf_counter() - t0
                        row.update({name + k: v for k, v in scores(image, truth).items()})
                    reused = (known or {}).get((row["mask"], row["noise"], row["maps"], row["slice"]))
                    if reused is not None:
                        row.update(reused, baselines="reused")
                    else:
                        row["cg_sense"], row["sense_at"] = oracle_sense(p.operator, p.y, truth)
                        row["l1_wavelet"], row["l1_at"] = oracle_l1(p.operator, p.y, truth)
                    rows.append(row)
                    print({k: v for k, v in row.items() if not k.endswith("_at")}, flush=True)
    return rows


def variant_keys(names: list[str], starts, samplers) -> dict[tuple, str]:
    """The column of each (package, start, sampler): the package's name, with the start and the
    sampler only where several are compared."""
    keys = {}
    for name in names:
        for start in starts:
            for sampler in samplers:
                parts = [f"{start} start"] * (len(starts) > 1) + [f"{sampler or 'own'} sampler"] * (len(samplers) > 1)
                keys[(name, start, sampler)] = f"{name} ({', '.join(parts)})" if parts else name
    return keys


def quality_markdown(rows: list[dict], names: list[str]) -> str:
    cells = {}
    for r in rows:
        cells.setdefault((r["mask"], r["noise"], r["maps"]), []).append(r)
    table = []
    for (m, n, maps), rs in cells.items():
        best = [max(r["cg_sense"], r["l1_wavelet"]) for r in rs]
        row = {"mask": m, "noise": f"{n:g}", "maps": maps, "slices": len(rs)}
        for name in names:
            row[name] = np.mean([r[name] for r in rs])
        row.update(
            {
                "CG-SENSE (oracle)": np.mean([r["cg_sense"] for r in rs]),
                "L1-wavelet (oracle)": np.mean([r["l1_wavelet"] for r in rs]),
            }
        )
        for name in names:
            row[f"margin {name}"] = np.mean([r[name] - b for r, b in zip(rs, best)])
        row["noise estimated"] = np.mean([r["noise_estimated"] for r in rs])
        table.append(row)
    return (
        "Magnitude PSNR (dB) after a least-squares scale, mean over the slices; margin: Diff-Unfolding "
        "less the better baseline, per slice, then averaged.\n\n"
        + markdown_table(table)
        + perceptual_table(cells, names)
    )


def perceptual_table(cells: dict, names: list[str]) -> str:
    """SSIM (and LPIPS where computed) of each method, mean over the slices."""
    table = []
    for (m, n, maps), rs in cells.items():
        row = {"mask": m, "noise": f"{n:g}", "maps": maps}
        for name in names:
            parts = [np.mean([r[f"{name}{k}"] for r in rs]) for k in (" ssim", " lpips") if f"{name}{k}" in rs[0]]
            row[name] = " / ".join(f"{v:.3f}" for v in parts)
        table.append(row)
    lpips = any(f"{n} lpips" in rs[0] for rs in cells.values() for n in names)
    return f"\n\nSSIM{' / LPIPS' if lpips else ''} of the magnitudes, mean over the slices:\n\n" + markdown_table(table)


def add_variant_arguments(ap) -> None:
    """``--start``, ``--sampler`` (several of each compared in one run) and ``--baselines``."""
    ap.add_argument(
        "--start",
        nargs="+",
        choices=list(STARTS),
        default=["sense"],
        help="quality: where sampling starts and what comes back (sense: the default, from the SENSE "
        "estimate, one call for 2-D masks; sense-sample: from it, a sampled tail for every mask; "
        "sense-18: the tail of the 18-step schedule; noise: the full schedule from pure noise); "
        "several are compared in one run",
    )
    ap.add_argument(
        "--sampler",
        nargs="+",
        type=lambda v: None if v == "own" else v,
        choices=[None, *edm.SAMPLERS],
        default=[None],
        metavar="{own," + ",".join(edm.SAMPLERS) + "}",
        help="quality: the sampler of every solve (own: each package's; native: its formulation's own, "
        "EDM's Table 1); several are compared in one run",
    )
    ap.add_argument(
        "--baselines",
        metavar="JSON",
        help="quality: reuse the oracle baselines of an earlier run's JSON on the same scans "
        "(same volumes, sizes, slices, noise levels and seed); the rest are computed",
    )
