"""Other methods on the scanner harness's scans (``bench/scanner.py --part quality``): the
zero-shot solvers on an MRI denoiser package (``--zero-shot PACKAGE --method NAME``) and the
learned baselines of ``bench/learned_baselines`` (``--learned MODULE:CHECKPOINT``). Each sees
what the packages see: the scan prepared as inference prepares it (estimated noise level, coil
compression, ESPIRiT or true maps, scale), and is scored the same way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Other:
    """A method of the comparison that is not a Diff-Unfolding package."""

    name: str
    what: str
    params: int
    calls: int  # network calls per slice
    run: Callable  # (prepared problem, seed) -> (1, 1, H, W) complex image


def zero_shot(path: str, methods: list[str] | None, backend: str) -> dict[str, Other]:
    from quality_harness.entrants import label, open_zero_shot

    from diffunfold.runtime.zero_shot import settings_for

    pkg, solver, chosen = open_zero_shot(path, methods, {"backend": backend}, kind="mri")
    params = int(pkg.manifest["parameters"]["regularizers"])

    def runner(method: str) -> Callable:
        def run(p, seed: int) -> np.ndarray:
            return np.asarray(solver.solve(p.y, p.operator, method=method, noise_std=p.data_std, seed=seed).images)

        return run

    out = {}
    for m in chosen:
        name = f"{label(m)} ({pkg.path.name})"
        out[name] = Other(name, f"zero-shot, {pkg.path.name}", params, settings_for(m).calls(), runner(m))
    return out


def learned(specs: list[str]) -> dict[str, Other]:
    """``MODULE:CHECKPOINT`` each, loaded as the quality harness loads them."""
    from quality_harness.entrants import load_learned

    out = {}
    for spec in specs:
        r, label, checkpoint = load_learned(spec)
        mask = getattr(r, "meta", {}).get("settings", {}).get("mask")
        name = label + (f" (trained on {mask})" if mask else "")

        def run(p, seed: int, r=r) -> np.ndarray:
            return np.asarray(r.restore(p.y, p.operator, p.data_std, seed))

        out[name] = Other(name, f"learned baseline, {checkpoint}", int(r.parameters), int(r.nfe), run)
    return out


def others_from(args) -> dict[str, Other]:
    found = zero_shot(args.zero_shot, args.method, args.backend) if args.zero_shot else {}
    return {**found, **learned(args.learned or [])}


def lpips_from(args):
    """The LPIPS metric of ``--lpips``, or None (then the rows carry PSNR and SSIM only)."""
    from quality_harness.cases import lpips_metric

    metric, note = lpips_metric(args.lpips)
    print(note, flush=True)
    return metric


def add_arguments(ap) -> None:
    ap.add_argument(
        "--zero-shot", metavar="PACKAGE", help="quality: an MRI denoiser package; its zero-shot solvers join"
    )
    ap.add_argument(
        "--method",
        nargs="+",
        help="with --zero-shot: the solvers (default dps dds: the paper's MRI comparison)",
    )
    ap.add_argument(
        "--learned",
        action="append",
        metavar="MODULE:CHECKPOINT",
        help="quality: a learned baseline of bench/learned_baselines (repeatable), e.g. varnet:runs/varnet-g1d4",
    )
    ap.add_argument(
        "--lpips",
        default="data/lpips",
        metavar="DIR",
        help="quality: LPIPS weights (`diffunfold data lpips DIR`; default data/lpips, 'none' to skip): "
        "LPIPS of the magnitudes beside PSNR and SSIM",
    )


def cost_markdown(rows: list[dict], packages: dict, others: dict[str, Other]) -> str:
    """Parameters, network calls and seconds per slice of every method in the run."""
    lines = ["| method | what | parameters | network calls per slice | s / slice |", "|---|---|---|---|---|"]
    for name, solver in packages.items():
        calls = [r[f"{name} calls"] for r in rows if f"{name} calls" in r]
        secs = [r[f"{name} s"] for r in rows if f"{name} s" in r]
        params = int(solver.package.manifest["parameters"]["total"])
        lines.append(f"| {name} | Diff-Unfolding | {params / 1e6:.2f} M | {np.mean(calls):.0f} | {np.mean(secs):.2f} |")
    for name, o in others.items():
        secs = [r[f"{name} s"] for r in rows if f"{name} s" in r]
        lines.append(f"| {name} | {o.what} | {o.params / 1e6:.2f} M | {o.calls} | {np.mean(secs):.2f} |")
    return "\n".join(lines)
