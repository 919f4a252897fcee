"""The demo's report: results.md (a header on how it ran, a table per task, the baselines and
the data's credits) and the closing lines of its log. Pure functions of the results and the
run's metadata that :mod:`diffunfold.demo` collects.
"""

from __future__ import annotations


def _flips_sentence(kinds: list[str]) -> str:
    """The header's word on the self-ensemble (nothing when no package uses it)."""
    if not kinds:
        return ""
    return (
        f" The {' and '.join(kinds)} package{'s' if len(kinds) > 1 else ''}' posterior samples see "
        "the image in four flips (self-ensemble)."
    )


def _contrast_sentence(kind: str, contrast: dict) -> str:
    text = (
        f" The {kind} package restores a flat image (std below {contrast['flat_std']:g}) at a photo's "
        "contrast and maps it back (contrast stretch)"
    )
    if contrast.get("colour"):
        text += "; it also moves each colour channel's level to mid-grey and back (colour centring)"
    return text + "."


def results_markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"# diffunfold demo: {meta['images']} held-out images per task, {meta['size']}x{meta['size']} px",
        "",
        f"Posterior mean of {meta['samples']} samples, {meta['sampler']} steps "
        f"({'; '.join(f'{k}: {v}' for k, v in meta['steps'].items())}), "
        f"backend {meta['backend']} on {meta['machine']}. "
        f"Image noise sigma_y = {meta['noise']:g} (range [0, 1]); MRI noise {meta['mri_noise']:g} x max|k|."
        + "".join(
            f" The {k} package samples stochastically (EDM's S_churn {p['churn']['s_churn']:g} for "
            f"sigma in [{p['churn']['s_min']:g}, {p['churn']['s_max']:g}])."
            for k, p in meta["packages"].items()
            if p["churn"]["s_churn"] > 0
        )
        + _flips_sentence([k for k, p in meta["packages"].items() if p["ensemble"] == "flips"])
        + "".join(_contrast_sentence(k, p["contrast"]) for k, p in meta["packages"].items() if p.get("contrast")),
        "",
        "| task | trained on | Diff-Unfolding PSNR / SSIM | baseline | baseline PSNR / SSIM | gain (dB) "
        "| pinv PSNR | s / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["mean"]
        pinv = f"{m['psnr_pinv']:.2f}" if "psnr_pinv" in m else "-"
        lines.append(
            f"| {r['label']} | {'yes' if r['trained'] else '**no**'} | {m['psnr']:.2f} / {m['ssim']:.3f} | "
            f"{r['baseline']} | {m['psnr_baseline']:.2f} / {m['ssim_baseline']:.3f} | "
            f"{m['psnr'] - m['psnr_baseline']:+.2f} | {pinv} | {m['seconds']:.2f} |"
        )
    lines += [
        "",
        "Baselines: Wiener = Wiener deconvolution with a natural 1/|f|^2 image prior calibrated on the "
        "training photos; pinv = the exact pseudo-inverse (for SR the best a linear method can do from "
        "the samples alone); normalised convolution = Gaussian-weighted interpolation of the observed "
        "pixels; zero-filled SENSE = the coil-combined inverse FFT of the sampled k-space.",
        "",
    ]
    for kind, d in meta.get("data", {}).items():
        lines.append(f"Data ({kind}): {d['source']}.")
        lines += [f"- {c}" for c in d["credits"]]
        lines.append("")
    lines.append(f"Written by `{meta['command']}` on {meta['date']}; figures: `<task>.png` beside this file.")
    return "\n".join(lines) + "\n"


def closing_lines(meta: dict) -> str:
    """What ran, for the last lines of the log: the backend (and why) and each modality's data."""
    lines = [f"backend: {meta['backend']} ({meta['backend_reason']})"]
    for kind, d in meta["data"].items():
        named = list(dict.fromkeys(c.split(":", 1)[0] for c in d["credits"]))  # the volume or photo names
        lines.append(f"{kind} data: {d['source']}" + (f": {', '.join(named)}" if named else ""))
    return "\n".join(lines)
