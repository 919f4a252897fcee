"""The comparison table (``quality-methods-<kind>.md``): Diff-Unfolding against the zero-shot
solvers and the learned baselines on the same cases, with each method's size, network calls and
time per image, as the paper's Tables 1, 2 and 5 report them."""

from __future__ import annotations

import numpy as np

from .entrants import Entrant
from .packages import Scored
from .report import _pair, best_baseline, find, images_used, noise_label
from .tasks import TASK_BY_KEY, Settings


def _cost_rows(scored: list[Scored], entrants: list[Entrant], s: Settings) -> list[tuple[str, str, int, float, float]]:
    """Per method: name, what it is, parameters, network calls per image and sample, s per image
    (the mean of ``s.samples`` draws, batch as the harness runs it)."""
    rows = []
    for sc in scored:
        images = sum(len(r.get("per_image", [])) for r in sc.rows if r["method"] == "model_mean")
        params = int(sc.package.manifest["parameters"]["total"])
        rows.append(
            (
                f"Diff-Unfolding ({sc.name})",
                "unfolded posterior denoiser",
                params,
                float(np.mean(sc.calls)) if sc.calls else float("nan"),
                sc.model_seconds / max(images, 1),
            )
        )
    for e in entrants:
        images = sum(len(r.get("per_image", [])) for r in e.rows)
        calls = float(np.mean(e.calls)) if e.calls else float("nan")
        rows.append((e.name, e.family, e.params, calls, e.seconds / max(images, 1)))
    return rows


def _cost_table(scored: list[Scored], entrants: list[Entrant], s: Settings) -> list[str]:
    rows = _cost_rows(scored, entrants, s)
    lines = [
        f"| method | what | parameters | network calls per image and sample | s / image (mean of {s.samples}) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {w} | {p / 1e6:.2f} M | {c:.0f} | {t:.2f} |" for n, w, p, c, t in rows]
    ours = [r for r in rows if r[0].startswith("Diff-Unfolding")]
    dps = [r for r in rows if r[0] == "DPS"]
    if ours and dps and ours[0][4] > 0:
        lines += [
            "",
            f"DPS takes {dps[0][4] / ours[0][4]:.0f}x the time of Diff-Unfolding per image here and makes "
            f"{dps[0][3] / ours[0][3]:.0f}x its network calls (the paper: 78.77 s against 0.72 s, 109x, on a GPU).",
        ]
    return lines


def _quality_table(scored: list[Scored], entrants: list[Entrant], baseline_rows: list[dict]) -> list[str]:
    names = [f"Diff-Unfolding ({sc.name})" for sc in scored] + [e.name for e in entrants]
    lines = [
        "| task | noise | " + " | ".join(names) + " | best classical baseline |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    rows_of = [(sc.rows, "model_mean") for sc in scored] + [(e.rows, "mean") for e in entrants]
    keys = dict.fromkeys(r["task"] for rows, _ in rows_of for r in rows)
    for key in keys:
        task = TASK_BY_KEY[key]
        levels = dict.fromkeys(r["noise"] for rows, _ in rows_of for r in rows if r["task"] == key)
        for level in levels:
            cells = [find(rows, key, level, method) for rows, method in rows_of]
            best_psnr = max((c["psnr"] for c in cells if c and "psnr" in c), default=None)
            shown = [f"**{_pair(c)}**" if c and c.get("psnr") == best_psnr else _pair(c) for c in cells]
            base = best_baseline(baseline_rows, key, level)
            lines.append(
                f"| {task.label} | {noise_label(task.kind, level)} | "
                + " | ".join(shown)
                + f" | {base['name'] + ': ' + _pair(base) if base else '-'} |"
            )
    return lines


def markdown_methods(
    scored: list[Scored], entrants: list[Entrant], baseline_rows: list[dict], meta: dict, s: Settings
) -> str:
    kind = entrants[0].kind
    return "\n".join(
        [
            f"# Methods compared ({kind})",
            "",
            f"- command: `{meta['command']}`",
            f"- date: {meta['date']}; machine: {meta['machine']}; wall time {meta['wall_seconds']:.0f} s",
            f"- data: {images_used(baseline_rows, s)} held-out {meta['data'][kind]} per task at {s.size} px, "
            f"seeds {meta['seed']} + i; every method sees the same measurements and is given the true noise level",
            f"- PSNR / SSIM{' / LPIPS' if meta.get('lpips', '').startswith('LPIPS:') else ''} of the mean of "
            f"{s.samples} posterior samples (a deterministic method: its one estimate); the best method of each "
            "row (by PSNR) in bold; '-': the method was not trained for that operator",
            f"- {meta.get('lpips', 'LPIPS not computed')}",
            "",
            "## Size, network calls and time",
            "",
            *_cost_table(scored, entrants, s),
            "",
            "## Quality",
            "",
            *_quality_table(scored, entrants, baseline_rows),
            "",
        ]
    )
