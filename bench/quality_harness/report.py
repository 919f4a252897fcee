"""The Markdown reports (one per package, one comparing packages) and the JSON summary rows."""

from __future__ import annotations

from .baselines import METHODS
from .cases import Case
from .packages import Scored, model_method_name
from .tasks import TASK_BY_KEY, Settings


def stretch_label(contrast: dict | None) -> str:
    return (
        ""
        if not contrast
        else (
            f", contrast stretch (std < {contrast['flat_std']:g} to "
            f"{contrast['target_std']:g}, gain <= {contrast['max_gain']:g})"
            + (", colour channels centred" if contrast.get("colour") else "")
        )
    )


def _row(case: Case, method: str, name: str, oracle: bool, baseline: bool, scores: dict) -> dict:
    return {
        "task": case.task.key,
        "label": case.task.label,
        "kind": case.task.kind,
        "noise": case.level,
        "method": method,
        "name": name,
        "oracle": oracle,
        "baseline": baseline,
        **scores,
    }


def find(rows: list[dict], task: str, noise: float, method: str) -> dict | None:
    return next((r for r in rows if r["task"] == task and r["noise"] == noise and r["method"] == method), None)


def best_baseline(rows: list[dict], task: str, noise: float) -> dict | None:
    cands = [r for r in rows if r["baseline"] and r["task"] == task and r["noise"] == noise and "psnr" in r]
    return max(cands, key=lambda r: r["psnr"]) if cands else None


def noise_label(kind: str, level: float) -> str:
    """The noise column: sigma_y for images; for MRI the fraction of the peak k-space magnitude
    max|A x| (no "|" here: it would split a Markdown table cell)."""
    return f"{level:g} x peak" if kind == "mri" and level else f"{level:g}"


def _pair(r: dict | None) -> str:
    """``PSNR / SSIM`` of a row (``/ LPIPS`` where it was computed), or "-"."""
    if r is None or "psnr" not in r:
        return "-"
    return f"{r['psnr']:.2f} / {r['ssim']:.3f}" + (f" / {r['lpips']:.3f}" if "lpips" in r else "")


def churn_label(churn: dict) -> str:
    """How the header names a stochastic sampler (nothing for the ODE)."""
    if not churn["s_churn"] > 0:
        return ""
    return (
        f", stochastic (EDM S_churn {churn['s_churn']:g} for sigma in [{churn['s_min']:g}, "
        f"{churn['s_max']:g}], S_noise {churn['s_noise']:g})"
    )


def images_used(rows: list[dict], s: Settings) -> int:
    """How many held-out images each case really had (a source may hold fewer than ``--images``)."""
    return max((len(r["per_image"]) for r in rows if "per_image" in r), default=s.images)


def package_header(sc: Scored, baseline_rows: list[dict], meta: dict, s: Settings) -> list[str]:
    """The title and the run's settings of a package's report."""
    src = sc.package.manifest.get("source", {})
    return [
        f"# Quality: {sc.name} ({sc.kind} model)",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; machine: {meta['machine']}",
        f"- package: `{sc.path}` ({sc.source}); manifest source: run {src.get('run', '?')}, step "
        f"{src.get('step', '?')}, {src.get('weights', '?')} weights, checkpoint {src.get('checkpoint', '?')}",
        f"- backend: {sc.solver.backend_name}; {s.samples} posterior samples, "
        f"{meta['steps'][sc.name]} {meta['sampler'][sc.name]} steps{churn_label(meta['churn'][sc.name])}"
        f"{', flip self-ensemble' if meta['ensemble'][sc.name] == 'flips' else ''}"
        f"{stretch_label(meta['contrast'][sc.name])}"
        f"{'' if s.sigma_min is None else f' ending at sigma {s.sigma_min:g}'}; the true noise level is given to the "
        f"solver ({'it weighs y by it' if sc.package.noise_aware else 'this package does not use it'})",
        f"- data: {images_used(baseline_rows, s)} held-out {meta['data'][sc.kind]} per task at "
        f"{s.size}x{s.size} px, seeds {meta['seed']} + i; noise: "
        + (
            "complex Gaussian k-space noise of std level x max|A x| of each image ('x peak')"
            if sc.kind == "mri"
            else "Gaussian noise of std sigma_y, images in [0, 1]"
        ),
        f"- wall time: {meta['wall_seconds']:.0f} s for the whole run; this package's solves {sc.model_seconds:.0f} s",
        *([f"- {meta['lpips']}; where computed, pairs read PSNR / SSIM / LPIPS"] if sc.kind == "image" else []),
        "",
    ]


def _gain_rows(sc: Scored, baseline_rows: list[dict], tasks: list) -> list[str]:
    """Per task and noise level: the posterior mean and one sample against the best baseline."""
    rows, lines = sc.rows, []
    for task in tasks:
        for level in dict.fromkeys(r["noise"] for r in rows if r["task"] == task.key):
            mean, one = find(rows, task.key, level, "model_mean"), find(rows, task.key, level, "model_sample")
            best = best_baseline(baseline_rows, task.key, level)
            gain = f"{mean['psnr'] - best['psnr']:+.2f}" if best else "-"
            lines.append(
                f"| {task.label} | {'yes' if sc.trained_on(task) else '**no**'} | "
                f"{noise_label(task.kind, level)} | {_pair(mean)} | {_pair(one)} | "
                f"{best['name'] if best else '-'} | {_pair(best)} | {gain} |"
            )
    return lines


def _every_method_tables(rows: list[dict], baseline_rows: list[dict], tasks: list) -> list[str]:
    """Per task: every method's scores at each noise level, the best baseline in bold."""
    lines = [
        "",
        "## Every method",
        "",
        "residual = ||A x_hat - y|| / ||y|| of the estimate as returned; noise residual = ||A x - y|| / ||y|| "
        "of the truth, the part of y the noise alone explains. An estimate far below the noise residual "
        "fits the noise; far above it, it ignores the data.",
        "",
    ]
    for task in tasks:
        lines += [
            f"### {task.label}",
            "",
            "| noise | method | PSNR | SSIM | LPIPS | residual | noise residual | s / image |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for level in dict.fromkeys(r["noise"] for r in rows if r["task"] == task.key):
            here = [r for r in rows + baseline_rows if r["task"] == task.key and r["noise"] == level]
            best = best_baseline(baseline_rows, task.key, level)
            for r in here:
                name = f"**{r['name']}**" if best is not None and r is best else r["name"]
                if "skipped" in r and r["skipped"]:
                    lines.append(f"| {noise_label(task.kind, level)} | {name} | skipped: {r['skipped']} | | | | | |")
                    continue
                lpips = f"{r['lpips']:.3f}" if "lpips" in r else "-"
                lines.append(
                    f"| {noise_label(task.kind, level)} | {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | {lpips} | "
                    f"{r['residual']:.4f} | {r['noise_residual']:.4f} | {r['seconds_per_image']:.2f} |"
                )
        lines.append("")
    return lines


def _methods_section(s: Settings, baseline_rows: list[dict]) -> list[str]:
    """What each method is, and what the oracle baselines know that no real method does."""
    return [
        "## Methods",
        "",
        f"- **{model_method_name('model_mean', s.samples)}** / **1 sample**: the package "
        "through the torch-free runtime (`Solver.solve`); draw 0 of the mean is the single sample.",
        *(f"- **{m.name}**: {m.about}" for m in METHODS.values() if any(r["method"] == m.key for r in baseline_rows)),
        "",
        "The best baseline (in bold) is the one with the highest mean PSNR for that task and noise level. "
        "**(oracle)**: its regularisation weight (and for CG-SENSE its iteration count) is chosen per image "
        "from a grid by PSNR against the ground truth, which no real method can know: an upper bound on "
        "that method with any one rule for the weight. The chosen values are in the JSON (`setting`). "
        "Images: PSNR/SSIM with data range 1. MRI: on magnitudes, data range the truth's maximum (fastMRI).",
        "",
    ]


def markdown_package(sc: Scored, baseline_rows: list[dict], meta: dict, s: Settings) -> str:
    rows = sc.rows
    lines = package_header(sc, baseline_rows, meta, s) + [
        "## Diff-Unfolding against the best baseline",
        "",
        f"| task | trained on | noise | mean of {s.samples}: PSNR / SSIM | 1 sample: PSNR / SSIM | best baseline "
        "| its PSNR / SSIM | gain (dB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tasks = [TASK_BY_KEY[k] for k in dict.fromkeys(r["task"] for r in rows)]
    lines += _gain_rows(sc, baseline_rows, tasks)
    lines += _every_method_tables(rows, baseline_rows, tasks)
    lines += _methods_section(s, baseline_rows)
    return "\n".join(lines)


def markdown_compare(scored: list[Scored], baseline_rows: dict[str, list[dict]], meta: dict, s: Settings) -> str:
    lines = [
        "# Quality: packages side by side",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; machine: {meta['machine']}; wall time {meta['wall_seconds']:.0f} s",
        f"- PSNR / SSIM of the posterior mean of {s.samples} samples, mean over "
        f"{' and '.join(str(images_used(r, s)) for r in baseline_rows.values() if r)} held-out "
        f"images per task at {s.size} px; MRI noise 'x peak' = its std as a fraction of max|A x| per image",
        "",
    ]
    for kind in ("image", "mri"):
        group = [sc for sc in scored if sc.kind == kind]
        if not group:
            continue
        base = baseline_rows[kind]
        lines += [
            f"## {kind}",
            "",
            "| task | noise | " + " | ".join(f"{sc.name}" for sc in group) + " | best baseline | its PSNR / SSIM |",
            "|---|---|" + "---|" * len(group) + "---|---|",
        ]
        for task in [TASK_BY_KEY[k] for k in dict.fromkeys(r["task"] for r in group[0].rows)]:
            for level in dict.fromkeys(r["noise"] for r in group[0].rows if r["task"] == task.key):
                cells = [_pair(find(sc.rows, task.key, level, "model_mean")) for sc in group]
                best = best_baseline(base, task.key, level)
                lines.append(
                    f"| {task.label} | {noise_label(kind, level)} | "
                    + " | ".join(cells)
                    + f" | {best['name'] if best else '-'} | {_pair(best)} |"
                )
        lines += ["", "Packages: " + "; ".join(f"{sc.name} = `{sc.path}` ({sc.source})" for sc in group), ""]
    return "\n".join(lines)


def summary(sc: Scored, baseline_rows: list[dict]) -> list[dict]:
    out = []
    for r in sc.rows:
        if r["method"] != "model_mean":
            continue
        best = best_baseline(baseline_rows, r["task"], r["noise"])
        one = find(sc.rows, r["task"], r["noise"], "model_sample")
        out.append(
            {
                "task": r["task"],
                "noise": r["noise"],
                "trained_on": sc.trained_on(TASK_BY_KEY[r["task"]]),
                "psnr_mean": r["psnr"],
                "ssim_mean": r["ssim"],
                "psnr_sample": one["psnr"],
                "ssim_sample": one["ssim"],
                "best_baseline": best["method"] if best else None,
                "best_baseline_psnr": best["psnr"] if best else None,
                "gain_db": r["psnr"] - best["psnr"] if best else None,
            }
        )
    return out
