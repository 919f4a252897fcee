"""MRI as a scanner delivers it: held-out head slices at native resolution, 15 simulated coils,
noise correlated between coils, coil maps and noise level estimated from the data
(``diffunfold.scanner``), against oracle-tuned CG-SENSE and L1-wavelet with the same maps.

Three parts (``--part``), each written to bench/results/scanner-<part>-<machine>.md/.json:

* ``quality``: PSNR of the magnitude after a least-squares scale (estimated maps fix the image
  only up to scale and phase; the same for every method), per mask, noise level and maps
  (ESPIRiT estimated, or the true ones), one posterior sample; ``--start sense sense-sample
  noise`` compares the default (from the SENSE estimate; one denoiser call, the posterior mean's
  estimate, for 2-D masks), the sampled tail from it, and the full schedule from pure noise. The
  baselines are oracles: each image's regularisation weight and iteration count are picked by
  its PSNR against the truth.
* ``speed``: seconds per slice, split into preparation (noise, compression, maps, the start),
  network, physics and the rest, for a slow path (every coil, ESPIRiT on the full grid, CG data
  steps, tiled, the full schedule from noise), the default one from noise (ESPIRiT on a 64 px
  grid, exact row-wise data steps for 1-D masks), the default (that, started from the SENSE
  estimate: ``diffunfold.scanner.start``) and a fast one (the default with 8 virtual coils and
  whole slices) of the same package, and ``--before``: an earlier package on the slow path;
  interleaved in one run, with their PSNR.
* ``noise``: the noise estimate against the true level, 0 included.
* ``mrd``: a multi-slice raw MRD file with noise-scan lines streamed to ``diffunfold serve``:
  the images back, the noise level each slice reports (prewhitened), PSNR, time per slice.

    python bench/scanner.py --part quality --package samples/models/mri-small --size 256
    python bench/scanner.py --part speed --package samples/models/mri-small --before <old package>
    python bench/scanner.py --part noise
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402
from machine import LoadWatch, add_output_arguments, machine_info, record  # noqa: E402
from scanner_baselines import known_baselines  # noqa: E402
from scanner_methods import add_arguments, cost_markdown, lpips_from, others_from  # noqa: E402
from scanner_metrics import SliceScores, magnitude_psnr  # noqa: E402
from scanner_quality import MASKS, add_variant_arguments, quality_markdown, quality_rows, scan, variant_keys  # noqa: E402

from diffunfold.data.mri_slices import VolumeSlices  # noqa: E402
from diffunfold.physics.mri import mri_mask  # noqa: E402
from diffunfold.runtime.solver import Solver  # noqa: E402
from diffunfold.scanner import ScannerSettings, StartSettings, estimate_kspace_noise, prepare_kspace  # noqa: E402
from diffunfold.scanner.simulate import random_noise_covariance  # noqa: E402
from diffunfold.scanner.start import sense_start  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

SLOW = ScannerSettings(virtual_coils=None, espirit_grid=1 << 16)


def speed_rows(solver: Solver, before: Solver | None, item: dict, repeats: int, seed: int, masks=MASKS) -> list[dict]:
    """The package on the slow path (every coil, ESPIRiT on the full grid, CG data steps, the
    full schedule from noise), the default one from noise (``noise start``), the default (from
    the SENSE estimate) and a fast one (8 virtual coils, whole slices); ``before``: an earlier
    package on the slow path."""
    noise, sense = StartSettings(method="noise"), StartSettings()
    paths = {
        "slow": (solver, SLOW, False, "auto", noise),
        "noise start": (solver, ScannerSettings(), True, "auto", noise),
        "default": (solver, ScannerSettings(), True, "auto", sense),
        "fast": (solver, ScannerSettings(virtual_coils=8), True, None, sense),
    }
    if before is not None:
        paths = {"before": (before, SLOW, False, "auto", noise), **paths}
    rows = []
    for kind, acc in masks:
        y, mask = scan(item, kind, acc, 0.0, seed)
        for rep in range(repeats):
            for name, (solver, settings, rows_exact, tile, start) in paths.items():  # interleaved
                t0 = time.perf_counter()
                p = prepare_kspace(y, mask, settings)
                p.operator.row_prox = rows_exact
                begin = sense_start(p, start)
                t1 = time.perf_counter()
                sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=seed, tile=tile, **begin)
                total = time.perf_counter() - t0
                tm = sol.timing
                rows.append(
                    {
                        "mask": f"{kind} {acc:g}x",
                        "path": name,
                        "round": rep,
                        "total_s": total,
                        "prepare_s": t1 - t0,
                        "network_s": tm.network,
                        "physics_s": tm.physics,
                        "other_s": total - (t1 - t0) - tm.network - tm.physics,
                        "network_calls": tm.network_calls,
                        "coils": p.operator.ncoils,
                        "tiling": sol.tiling,
                        "backend": solver.backend_name,
                        "psnr": magnitude_psnr(np.asarray(sol.images)[0, 0], item["image"][0]),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def speed_markdown(rows: list[dict]) -> str:
    table = []
    for mask in dict.fromkeys(r["mask"] for r in rows):
        med = {}
        for path in dict.fromkeys(r["path"] for r in rows):
            rs = [r for r in rows if r["mask"] == mask and r["path"] == path]
            med[path] = {
                k: float(np.median([r[k] for r in rs]))
                for k in ("total_s", "prepare_s", "network_s", "physics_s", "other_s", "psnr")
            }
            table.append(
                {
                    "mask": mask,
                    "path": path,
                    **med[path],
                    "network_calls": rs[0]["network_calls"],
                    "coils": rs[0]["coils"],
                    "tiling": rs[0]["tiling"],
                }
            )
        for path in ("default", "fast"):
            for ref in ("slow", "before", "noise start"):
                if ref in med:
                    table.append(
                        {
                            "mask": mask,
                            "path": f"{path} / {ref}",
                            "total_s": med[path]["total_s"] / med[ref]["total_s"],
                            "psnr": med[path]["psnr"] - med[ref]["psnr"],
                        }
                    )
    return (
        "Seconds per slice (median of the rounds, interleaved), one posterior sample; psnr: magnitude PSNR; "
        "the ratio rows: the time ratio and the PSNR difference.\n\n" + markdown_table(table)
    )


def noise_rows(items: list[dict], levels, masks=MASKS) -> list[dict]:
    rows = []
    for kind, acc in masks:
        for level in levels:
            for i, item in enumerate(items):
                y, mask = scan(item, kind, acc, level, 100 + i)
                est, how = estimate_kspace_noise(y, mask)
                rows.append(
                    {
                        "mask": f"{kind} {acc:g}x",
                        "size": item["image"].shape[-1],
                        "true": level,
                        "estimated": est,
                        "error_%": 100 * (est - level) / level if level else None,
                        "slice": item["name"],
                        "method": how,
                    }
                )
    return rows


def noise_markdown(rows: list[dict]) -> str:
    cells = {}
    for r in rows:
        cells.setdefault((r["mask"], r["size"], r["true"]), []).append(r["estimated"])
    table = [
        {
            "mask": m,
            "size": s,
            "true level": t,
            "estimated (mean)": float(np.mean(v)),
            "min": float(np.min(v)),
            "max": float(np.max(v)),
            "error of the mean %": 100 * (np.mean(v) - t) / t if t else None,
        }
        for (m, s, t), v in cells.items()
    ]
    return (
        "Complex k-space noise std (the image's 99th percentile is 1), correlated between 15 coils, "
        "estimated from the data alone (`diffunfold.scanner.estimate_kspace_noise`).\n\n" + markdown_table(table)
    )


def mrd_rows(package: str, items: list[dict], level: float, seed: int) -> list[dict]:
    """A multi-slice raw MRD file of the slices (15 coils, Gaussian 1-D 4x, readout oversampled
    twice, noise correlated between coils, noise-scan lines) streamed to ``diffunfold serve``."""
    import tempfile

    from diffunfold.mrd.client import send_file
    from diffunfold.mrd.spawn import ServerProcess
    from diffunfold.mrd.writer import write_phantom_mrd

    images = np.stack([it["image"][0] for it in items])
    psi = random_noise_covariance(15, np.random.default_rng(seed))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_phantom_mrd(
            Path(tmp) / "head.h5",
            images=images,
            coils=15,
            mask="gaussian1d",
            acceleration=4.0,
            noise_std=level,
            noise_scans=16,
            seed=seed,
            noise_covariance=psi,
        )
        server = ServerProcess(package, omp_threads=None)
        try:
            reply = send_file(path, port=server.port)
        finally:
            server.stop()
    reply.check()
    rows = []
    for img in sorted(reply.images, key=lambda im: (int(im.image_series_index), int(im.slice))):
        if int(img.image_series_index) != 1:
            continue
        s = int(img.slice)
        values = np.asarray(img.data, dtype=np.float64)[0, 0].T  # MRD images are (phase, readout)
        meta = img.meta
        rows.append(
            {
                "slice": items[s]["name"],
                "size": values.shape[-1],
                "noise_true": level,
                "noise_reported": meta.get("DiffUnfoldNoise"),
                "coil_maps": meta.get("DiffUnfoldCoilMaps"),
                "psnr": magnitude_psnr(values, items[s]["image"][0]),
                "latency_s": reply.received_at[s] - reply.sent_at[s],
            }
        )
        print(rows[-1], flush=True)
    return rows


def mask_spec(text: str) -> tuple[str, float]:
    """``gaussian2d:4`` -> ("gaussian2d", 4.0), checked by building a small mask of it."""
    kind, _, acc = text.partition(":")
    try:
        mri_mask(kind, (64, 64), float(acc), seed=1)
    except (ValueError, KeyError) as e:
        raise argparse.ArgumentTypeError(f"{text!r}: want KIND:ACCELERATION, e.g. gaussian2d:4 ({e})") from None
    return kind, float(acc)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["quality", "speed", "noise", "mrd"], required=True)
    ap.add_argument(
        "--package",
        nargs="+",
        default=[str(ROOT / "samples" / "models" / "mri-small")],
        help="model package(s); quality compares several on the same scans",
    )
    ap.add_argument("--before", help="speed: an earlier package, timed on the slow path too")
    ap.add_argument(
        "--volumes",
        default=str(ROOT / "data" / "mri" / "held-out"),
        help="held-out head volumes (`diffunfold data mri-volumes DIR`: DIR/held-out)",
    )
    ap.add_argument("--size", type=int, nargs="+", default=[256], help="slice sizes (px)")
    ap.add_argument("--slices", type=int, default=3, help="slices per cell (orientations in turn)")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.02], help="k-space noise std levels")
    ap.add_argument(
        "--masks",
        type=mask_spec,
        nargs="+",
        default=list(MASKS),
        help="sampling masks as KIND:ACCELERATION (default: gaussian1d:4 gaussian2d:8; the paper's Table 4 "
        "uses gaussian2d:4)",
    )
    add_variant_arguments(ap)
    add_arguments(ap)
    ap.add_argument(
        "--maps",
        nargs="+",
        choices=["espirit", "true"],
        default=["espirit", "true"],
        help="quality: coil maps estimated from the data (ESPIRiT), the true ones, or both (default)",
    )
    ap.add_argument("--repeats", type=int, default=2, help="speed: interleaved rounds")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    add_output_arguments(ap)
    return ap


def _run_part(args, size: int) -> tuple[list[dict], str]:
    """One size of the chosen part: its rows and its Markdown section ("" for noise, whose
    table is made over all sizes)."""
    items = VolumeSlices(args.volumes, size=size).fixed(args.slices)
    if args.part == "mrd":
        found = mrd_rows(args.package[0], items, max(args.noise), args.seed)
        return found, f"## {size} px, {len(items)} slices, noise {max(args.noise):g}\n\n" + markdown_table(found)
    if args.part == "noise":
        return noise_rows(items, sorted({0.0, 1e-3, 3e-3, 0.01, 0.03, 0.1, *args.noise}), args.masks), ""
    if args.part == "quality":
        names = [Path(p).name for p in args.package]
        names = names if len(set(names)) == len(names) else list(args.package)
        solvers = {n: Solver.load(p, backend=args.backend) for n, p in zip(names, args.package)}
        others, known = others_from(args), known_baselines(args.baselines)
        scores = SliceScores(lpips_from(args))
        starts, samplers = tuple(args.start), tuple(args.sampler)
        found = quality_rows(
            solvers, items, args.noise, args.seed, starts, known, others, args.maps, scores, args.masks, samplers
        )
        keys = list(variant_keys(list(solvers), starts, samplers).values())
        cost = f"\n\n### Size, calls and time\n\n{cost_markdown(found, solvers, others)}" if others else ""
        return found, f"## {size} px\n\n" + quality_markdown(found, keys + list(others)) + cost
    solver = Solver.load(args.package[0], backend=args.backend)
    before = Solver.load(args.before, backend=args.backend) if args.before else None
    found = speed_rows(solver, before, items[0], args.repeats, args.seed, args.masks)
    return found, f"## {size} px, {items[0]['name']}\n\n" + speed_markdown(found)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    warnings.simplefilter("ignore")  # numba's deprecation notes from SigPy
    watch, info = LoadWatch(), machine_info()
    rows, parts = [], []
    for size in args.size:
        found, part = _run_part(args, size)
        rows += found
        parts.append(part)
    markdown = noise_markdown(rows) if args.part == "noise" else "\n\n".join(parts)
    settings_note = f"\n\nPackage(s): {', '.join(args.package)}" + (
        f"; slow path: {args.before}" if args.before else ""
    )
    if args.baselines:
        settings_note += f"\n\nOracle baselines reused from {args.baselines} where the scan matched."
    # quality at several sizes: one file per size set, so a 64 px run keeps the 256 px one
    name = f"scanner-{args.part}" + (f"-{'-'.join(map(str, args.size))}px" if args.part == "quality" else "")
    record(
        name,
        watch,
        info,
        args,
        rows,
        markdown + settings_note,
        f"MRI as a scanner delivers it: {args.part}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
