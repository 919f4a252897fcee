"""What ``diffunfold restore`` (images) and ``diffunfold mri`` share: the runtime's options on
the command line, loading the solver, the progress bar and the report of timings.

Nothing here imports torch; heavy imports (numpy, the runtime, tqdm) happen inside the
functions, so that ``diffunfold --help`` stays quick.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import cli_values as V
from . import edm
from .batch import earlier_rows
from .errors import InputError
from .runtime.backends import BACKENDS
from .safe_io import write_json


def tile_value(text: str):
    """--tile: auto, none/0, or a side in pixels, a multiple of 8 (every U-Net here downsamples
    by 8; the solver checks the package's own multiple); refused before any work."""
    from .runtime.tiling import parse_tile

    try:
        return parse_tile(text, 8)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_sampler_arguments(p: argparse.ArgumentParser) -> None:
    """``--sampler`` and EDM's ``--churn``: what walks the noise levels."""
    p.add_argument(
        "--sampler",
        choices=edm.SAMPLERS,
        help="sampler (default: the package's schedule.sampler: ancestral for the bundled packages, "
        "euler where a manifest names none; heun costs 2N-1 network passes; native: the package's "
        "diffusion formulation's own ODE solver of EDM's Table 1, e.g. Euler in VP's t with its "
        "scaling; ancestral: DDPM's stochastic sampler, fresh noise at every step; pc: the score-SDE "
        "paper's predictor-corrector, 2N passes)",
    )
    V.add_churn_arguments(
        p,
        "EDM's stochastic sampler: re-noise by this S_churn before each step (default: "
        "the package's, see its manifest's schedule; 0: the deterministic ODE)",
    )


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        default="auto",
        metavar="NAME",
        help=f"{', '.join(BACKENDS)} (default: auto, the fastest one usable here; the report says which and why)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument(
        "--threads", type=V.THREADS, default=0, metavar="N", help="CPU threads for the network (default 0: all cores)"
    )
    p.add_argument(
        "--steps",
        type=V.STEPS,
        metavar="N",
        help="sampler steps (default: the package's schedule: 6 from the classical estimate for image "
        "packages, 18 from noise (the paper's) otherwise)",
    )
    _add_sampler_arguments(p)
    p.add_argument(
        "--samples",
        type=V.SAMPLES,
        default=1,
        metavar="N",
        help="posterior samples per image: >1 gives their mean and a std map (default: 1)",
    )
    V.add_ensemble_argument(
        p,
        "flips: posterior sample j's network sees the j-th of four flips of the image, "
        "so the mean averages out the network's orientation errors at no cost; none: "
        "every sample as it is (default: the package's)",
    )
    p.add_argument("--seed", type=V.SEED, default=0, help="base seed (default: 0)")
    V.add_method_argument(p)
    p.add_argument(
        "--tile",
        type=tile_value,
        default="auto",
        metavar="N|auto|none",
        help="run the network on overlapping NxN tiles, blended (the physics stays on the whole "
        "image): auto (default) sizes them from the package's training size and the memory; "
        "none or 0: the whole image at once",
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true", help="replace existing output files")
    again.add_argument("--resume", action="store_true", help="keep what a stopped run finished; do only the rest")
    p.add_argument("--json", metavar="FILE", help="also write the results (and timings) as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def load_solver(pkg, args):
    """The package's solver, after checking that ``--method`` suits the package (before any input)."""
    from .runtime.solver import Solver
    from .runtime.zero_shot import route

    route(getattr(args, "method", None), pkg.kind)
    return Solver.load(pkg, backend=args.backend, device=args.device, threads=args.threads)


def progress_bar(desc: str, unit: str, quiet: bool):
    from tqdm.auto import tqdm

    return lambda items: tqdm(items, desc=desc, unit=unit, disable=quiet, leave=False)


def sum_timing(rows: list[dict]):
    from .runtime.solver import Timing

    total = Timing()
    for r in rows:
        t = r["timing"]
        total.network += t["network_s"]
        total.physics += t["physics_s"]
        total.total += t["total_s"]
        total.network_calls += t["network_calls"]
    return total


def report_runtime(solver, rows: list[dict], unit: str, wall: float, samples: int) -> list[str]:
    if not rows:
        return [f"backend: {solver.backend_name} [{solver.backend_reason}]"]
    timing = sum_timing(rows)
    per = timing.total / len(rows)
    return [
        f"backend: {solver.backend_name} [{solver.backend_reason}]",
        f"{len(rows)} {unit}(s): {per:.3f} s per {unit} in the solver ({wall:.2f} s wall in all, with I/O "
        f"and baselines); NFE {rows[-1]['nfe']} x K={solver.stages} network passes x {samples} sample(s)",
        f"solver time {timing}",
    ]


def skipped_note(batch, what: str, out_dir: Path) -> list[str]:
    if not batch.skipped:
        return []
    return [f"--resume: {len(batch.skipped)} {what}(s) already finished in {out_dir}/ were kept, not redone"]


def write_report(path: str, data: dict, batch, key: str) -> None:
    """The JSON report: this run's rows, the earlier run's rows of what --resume skipped, and
    the failures."""
    rows = earlier_rows(path, batch.skipped, key) + batch.rows
    write_json(
        path,
        {
            **data,
            "rows": rows,
            "skipped": batch.skipped,
            "failures": [{"name": n, "reason": r} for n, r in batch.failures],
        },
        default=json_default,
    )
    print(f"wrote {path}")


def json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def fmt(v: float, digits: int = 2) -> str:
    return "inf" if v == float("inf") else f"{v:.{digits}f}"


def _ssim(v: float) -> str:
    return f"{v:.4f}"


def _seconds(v: float) -> str:
    return f"{v:.2f}"


def scored_table(rows: list[dict], lead: list[tuple], pairs: list[tuple[str, str]]) -> list[str]:
    """The markdown table of a restore or MRI run: the ``lead`` columns (``(header, row -> text)``),
    PSNR and SSIM for each ``(label, key suffix)`` of ``pairs`` (keys ``psnr<suffix>``,
    ``ssim<suffix>``), the seconds, and a mean row where there is more than one row."""
    import numpy as np

    scores = []
    for label, key in pairs:
        scores += [(f"{label}PSNR", f"psnr{key}", fmt), (f"{label}SSIM", f"ssim{key}", _ssim)]
    scores.append(("s", "seconds", _seconds))
    header = [h for h, _ in lead] + [h for h, _, _ in scores]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([f(r) for _, f in lead] + [show(r[k]) for _, k, show in scores]) + " |")
    if len(rows) > 1:
        means = [show(float(np.mean([r[k] for r in rows]))) for _, k, show in scores]
        lines.append("| mean |" + " |" * (len(lead) - 1) + " " + " | ".join(means) + " |")
    return lines


__all__ = [
    "add_runtime_arguments",
    "fmt",
    "json_default",
    "load_solver",
    "progress_bar",
    "report_runtime",
    "scored_table",
    "skipped_note",
    "sum_timing",
    "tile_value",
    "write_report",
]
