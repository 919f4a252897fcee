"""Score trained learned baselines on held-out data, beside the bundled Diff-Unfolding package on
the very same measurements; writes bench/results/learned-baselines/<name>-<machine>.md/.json.

* ``image``: the first ``--images`` (5) held-out photos at 64 px (``diffunfold.data.held_out``,
  as bench/quality.py picks them), Gaussian blur sigma 2 (the harness's case), sigma_y 0.01 and
  0.05; PSNR / SSIM in [0, 1]. The package runs its defaults (fast schedule).
* ``mri``: fixed slices of the held-out head at 64 px (``bench/scanner.py``'s scans: 15
  simulated coils, noise 0 and 0.02 correlated between coils), one mask; ESPIRiT maps, noise
  level and scale from the data (``diffunfold.scanner.prepare_kspace``); magnitude PSNR / SSIM
  after a least-squares scale (``bench/scanner.py``'s measure: estimated maps fix the image only
  up to scale and phase). The package runs its default SENSE start.

Every method sees the same y and seed; s/image is the wall time of one image (batch 1) on this
machine, network calls per image beside it. The first row is the floor: the blurred measurement
itself, or the zero-filled image ``A^H y``.

    python bench/learned_baselines/evaluate.py image --cedm runs/cedm-gaussian-blur --allow-busy
    python bench/learned_baselines/evaluate.py mri --cedm runs/cedm-mri-g1d4 --varnet runs/varnet-g1d4 --allow-busy
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
from machine import LoadWatch, add_output_arguments, machine_info, record  # noqa: E402

from diffunfold.metrics import psnr, ssim  # noqa: E402
from learned_baselines import cedm, shared, varnet  # noqa: E402

OUT = BENCH / "results" / "learned-baselines"


def _timed(fn) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = fn()
    return np.asarray(out), time.perf_counter() - t0


def _methods(args, ctx: dict) -> dict:
    """name -> [restore(y, op, noise_std, seed) -> image, parameters, network calls per image];
    ``ctx["prepared"]``: the prepared scan the package's SENSE start reads (MRI)."""
    from diffunfold.runtime import Solver

    # the floor: the blurred measurement itself, or the zero-filled image A^H y
    if args.part == "image":
        methods = {"measurement y": [lambda y, op, std, seed: y, None, 0]}
    else:
        methods = {"zero-filled A^H y": [lambda y, op, std, seed: op.AT(y), None, 0]}
    for path in args.package:
        solver = Solver.load(path)

        def run(y, op, std, seed, solver=solver, mri=args.part == "mri"):
            options = {}
            if mri:
                from diffunfold.scanner import StartSettings
                from diffunfold.scanner.start import sense_start

                options = sense_start(ctx["prepared"], StartSettings())
            sol = solver.solve(y, op, noise_std=std, seed=seed, **options)
            run.calls = sol.timing.network_calls
            return sol.images

        run.calls = None
        methods[f"Diff-Unfolding ({Path(path).name})"] = [run, solver.package.manifest["parameters"]["total"], None]
    found = [("cEDM", cedm, p) for p in args.cedm or []] + [("E2E-VarNet", varnet, p) for p in args.varnet or []]
    for name, module, path in found:
        r = module.load(path)
        label = f"{name} ({r.meta.get('step', '?')} steps)"
        if len(found) > 1:  # several: say which run each is
            p = Path(path)
            label = f"{name} {p.name if p.is_dir() else p.parent.name if p.name.startswith('step-') else p.stem}"
            label += f" ({r.meta.get('step', '?')} steps)"
        methods[label] = [r.restore, r.parameters, r.nfe]
    return methods


# the methods that draw a sample (the rest are one deterministic pass)
STOCHASTIC = ("Diff-Unfolding", "cEDM")


def _mean_of(fn, samples: int):
    """``fn`` as the mean of ``samples`` draws (seeds ``seed``, ``seed + 7919``, ...): the
    posterior-mean estimate, the same for every stochastic method."""

    def mean(y, op, std, seed):
        out = np.mean([np.asarray(fn(y, op, std, seed + 7919 * k)) for k in range(samples)], axis=0)
        mean.calls = getattr(fn, "calls", None)
        return out

    return mean


def _score(methods: dict, row: dict, y, op, std, seed, truth, measure, samples: int = 1) -> None:
    for name, entry in methods.items():
        fn = entry[0]
        if samples > 1 and name.startswith(STOCHASTIC):
            fn = _mean_of(fn, samples)
        est, seconds = _timed(lambda: fn(y, op, std, seed))
        row[name] = measure(est, truth)
        row[f"{name} s"] = seconds
        if getattr(fn, "calls", None) is not None:
            entry[2] = fn.calls


def image_rows(args, methods: dict) -> list[dict]:
    from diffunfold.data.held_out import held_out_photos
    from diffunfold.physics.tasks import make_operator

    names, images = held_out_photos(args.photos, 64, args.images)
    op = make_operator("gaussian_blur", (64, 64), sigma=2.0)

    def measure(est, truth):
        return (float(psnr(est[0], truth, 1.0)), float(ssim(est[0], truth, 1.0)))

    rows = []
    for noise in args.noise or (0.01, 0.05):
        for i, (name, x) in enumerate(zip(names, images)):
            y = op.measure(x[None], noise, seed=args.seed + i)
            row = {"task": "gaussian_blur sigma 2", "noise": noise, "image": name}
            _score(methods, row, y, op, noise, args.seed + i, x, measure, args.samples)
            rows.append(row)
            print(row, flush=True)
    return rows


def _magnitude(est, truth) -> tuple[float, float]:
    a, t = np.abs(est).ravel(), np.abs(truth).ravel()
    scaled = (float(a @ t / max(a @ a, 1e-30)) * np.abs(est)).reshape(np.shape(truth)).astype(np.float32)
    tm = np.abs(truth).astype(np.float32)
    return float(psnr(scaled[None, None], tm[None, None], None)[0]), float(ssim(scaled[None, None], tm[None, None])[0])


def mri_rows(args, methods: dict, ctx: dict) -> list[dict]:
    from scanner import scan

    from diffunfold.data.mri_slices import VolumeSlices
    from diffunfold.scanner import prepare_kspace

    kind, acc = shared.parse_mask(args.mask)
    items = VolumeSlices(args.volumes, size=64).fixed(args.images)

    def measure(est, truth):
        return _magnitude(est[0, 0], truth)

    rows = []
    for level in args.noise or (0.0, 0.02):
        for i, item in enumerate(items):
            y, mask = scan(item, kind, acc, level, args.seed + i)
            p = prepare_kspace(y, mask)
            ctx["prepared"] = p
            row = {"mask": args.mask, "noise": level, "slice": item["name"]}
            truth = item["image"][0]
            _score(methods, row, p.y, p.operator, p.data_std, args.seed + i, truth, measure, args.samples)
            rows.append(row)
            print({k: v for k, v in row.items()}, flush=True)
    return rows


LEVELS = (0.02, 0.1, 0.5, 2.0, 10.0, 80.0)


def level_rows(args) -> list[dict]:
    """``--levels``: PSNR of one cEDM call ``D(x + s n; s, c)`` per noise level s, trained and at
    its start (``--init``), on the part's first held-out case at the last noise level (MRI: the
    clean slice fitted to the scan's scale and global phase; ESPIRiT's smooth phase is not)."""
    import torch

    trained = cedm.load(args.cedm[0]).model
    start = cedm.ConditionalEDM(trained.settings)
    cedm.init_from_package(start, args.init)
    noise = (args.noise or ((0.05,) if args.part == "image" else (0.02,)))[-1]
    if args.part == "image":
        from diffunfold.data.held_out import held_out_photos
        from diffunfold.physics.tasks import make_operator

        x = held_out_photos(args.photos, 64, 1)[1]
        op = make_operator("gaussian_blur", (64, 64), sigma=2.0)
        y = op.measure(x, noise, seed=args.seed)
        measure = lambda est: float(psnr(np.clip(est, 0, 1), x, 1.0)[0])  # noqa: E731
    else:
        from scanner import scan

        from diffunfold.data.mri_slices import VolumeSlices
        from diffunfold.scanner import prepare_kspace

        item = VolumeSlices(args.volumes, size=64).fixed(1)[0]
        p = prepare_kspace(*scan(item, *shared.parse_mask(args.mask), noise, args.seed))
        op, y, x = p.operator, p.y, item["image"][None]
        measure = lambda est: _magnitude(est[0, 0], x[0, 0])[0]  # noqa: E731
    space = trained.space
    cond = torch.as_tensor(cedm.condition(y, op, space))
    if args.part == "mri":  # the clean slice at the scan's scale and global phase (a complex least-squares fit)
        zf = np.asarray(op.AT(y))
        x = (np.vdot(x, zf) / np.vdot(x, x) * x).astype(np.complex64)
    ref = torch.as_tensor(np.asarray(space.to_model(x), dtype=np.float32))
    n = torch.randn(ref.shape, generator=torch.Generator().manual_seed(args.seed))
    rows = []
    with torch.no_grad():
        for s in LEVELS:
            row = {"sigma": s}
            for name, model in (("start", start.eval()), ("trained", trained)):
                d = model(ref.float() + s * n, torch.tensor([s]), cond)
                row[name] = measure(np.asarray(space.to_user(d.numpy())))
            rows.append(row)
            print(row, flush=True)
    return rows


def markdown(rows: list[dict], methods: dict, key: str, command: str, samples: int = 1) -> str:
    lines = [f"Command: `{command}`", "", "| " + key + " | noise | method | PSNR | SSIM | s/image | params | calls |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    cells = {}
    for r in rows:
        cells.setdefault((r[key], r["noise"]), []).append(r)
    for (k, noise), rs in cells.items():
        for name, (_, params, calls) in methods.items():
            p = np.mean([r[name][0] for r in rs])
            s = np.mean([r[name][1] for r in rs])
            sec = np.median([r[f"{name} s"] for r in rs])
            pstr = f"{params / 1e6:.2f} M" if params else "-"
            lines.append(f"| {k} | {noise:g} | {name} | {p:.2f} | {s:.4f} | {sec:.3f} | {pstr} | {calls} |")
    lines.append(f"\n{len(rs)} images per cell; PSNR/SSIM means, s/image the median (batch 1).")
    if samples > 1:
        lines.append(f"{', '.join(STOCHASTIC)}: the mean of {samples} samples, timed together; calls are per sample.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python bench/learned_baselines/evaluate.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("part", choices=("image", "mri"))
    ap.add_argument(
        "--levels",
        action="store_true",
        help="instead: the PSNR of one cEDM call per noise level, trained and at its start (needs --init)",
    )
    ap.add_argument("--init", help="--levels: the package cEDM started from")
    ap.add_argument("--cedm", nargs="+", help="cEDM checkpoint(s) or run folder(s)")
    ap.add_argument("--varnet", nargs="+", help="mri: E2E-VarNet checkpoint(s) or run folder(s)")
    ap.add_argument("--package", nargs="*", help="Diff-Unfolding package(s) (default: the bundled one of the part)")
    ap.add_argument("--mask", default="gaussian1d:4", help="mri: the mask, KIND:ACCELERATION (default gaussian1d:4)")
    ap.add_argument("--images", type=int, default=None, help="photos (default 5) or slices (default 3)")
    ap.add_argument("--noise", type=float, nargs="+", help="sigma_y levels (image 0.01 0.05; mri 0 0.02)")
    ap.add_argument("--photos", default=str(shared.PHOTOS / "held-out"))
    ap.add_argument("--volumes", default=str(shared.MRI / "held-out"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--samples",
        type=int,
        default=1,
        help="score the mean of this many draws of each sampling method (Diff-Unfolding, cEDM); default 1",
    )
    ap.add_argument("--name", help="results file name (default: the part's task)")
    add_output_arguments(ap)
    ap.set_defaults(out=str(OUT))
    args = ap.parse_args(argv)
    root = shared.ROOT / "samples" / "models"
    args.package = args.package if args.package is not None else [str(root / f"{args.part}-small")]
    args.images = args.images or (5 if args.part == "image" else 3)
    if args.samples < 1:
        ap.error(f"--samples must be at least 1, got {args.samples}")
    if args.levels:
        if not (args.cedm and args.init):
            ap.error("--levels needs --cedm and --init")
        rows = level_rows(args)
        print("| sigma | " + " | ".join(f"{r['sigma']:g}" for r in rows) + " |")
        for name in ("start", "trained"):
            print(f"| {name} | " + " | ".join(f"{r[name]:.2f}" for r in rows) + " |")
        return 0
    watch = LoadWatch()
    ctx: dict = {}
    methods = _methods(args, ctx)
    rows = image_rows(args, methods) if args.part == "image" else mri_rows(args, methods, ctx)
    key = "task" if args.part == "image" else "mask"
    command = "python bench/learned_baselines/evaluate.py " + " ".join(sys.argv[1:] if argv is None else argv)
    name = args.name or ("gaussian-blur" if args.part == "image" else f"mri-{args.mask.replace(':', '-')}x")
    info = machine_info()
    report = markdown(rows, methods, key, command, args.samples)
    record(name, watch, info, args, rows, report, f"Learned baselines: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
