"""bench/train_step.py's report: the table of the variants, the notes under it, the warning of
a busy machine and the settings written with the results, from the result ``train_step.run`` returns."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import fmt_number, markdown_table  # noqa: E402


def table(rows: list[dict]) -> str:
    def cell(v):
        return fmt_number(v, 3) if isinstance(v, float) else ("" if v is None else str(v))

    def acc(r, key):
        return r[key] if r[key] is not None else ("(ref.)" if r["variant"] == "fp32" else "-")

    timed = [
        dict(r, loss_rel_diff=acc(r, "loss_rel_diff"), grad_rel_err=acc(r, "grad_rel_err"))
        for r in rows
        if "skipped" not in r
    ]
    fmt = lambda v: f"{v:.1e}" if isinstance(v, float) and 0 < abs(v) < 1e-3 else cell(v)  # noqa: E731
    text = markdown_table(
        timed,
        ["variant", "s_per_step", "ratio_vs_fp32", "images_per_s", "loss_rel_diff", "grad_rel_err"],
        ["variant", "median s/step", "ratio vs fp32", "images/s", "loss rel. diff", "grad rel. err"],
        fmt=fmt,
    )
    for r in rows:
        if "skipped" in r:
            text += f"\n\n`{r['variant']}`: skipped ({r['skipped']})."
    return text


def table_notes(res: dict) -> str:
    """How to read the table, with the minibatch noise of SGD for scale where it was measured."""
    text = (
        "ratio vs fp32 = variant s/step / fp32 s/step (below 1: cheaper). loss rel. diff and grad rel. err: "
        "against FP32 on the same batch and weights (largest over the batches); fp32 channels_last "
        "shows the FP32 rounding floor. edm_denoiser: one regulariser call and EDM's loss, not "
        "comparable in loss or gradient. compile (when timed): its ratio is against fp32 timed again, "
        "interleaved with it, after the other variants."
    )
    if res["grad_minibatch_noise"] is not None:
        text += (
            f" For scale: the FP32 gradients of two different batches (same weights) differ by "
            f"{res['grad_minibatch_noise']:.2f} (rel. L2), the minibatch noise every step already has."
        )
    return text


def busy_warning(res: dict) -> str:
    """A bold warning above the table when the load average passed half the cores at any reading; else ""."""
    loads = [
        x for x in (res["info"].get("load_average_1m"), res["load_before_timing"], res["load_after"]) if x is not None
    ]
    warn = ""
    if loads and max(loads) > 0.5 * (res["info"]["cores"] or 1):
        warn = (
            f"**Warning: the machine was busy (1-minute load average up to {max(loads)} on "
            f"{res['info']['cores']} cores): another process shared the cores, so these times are "
            "polluted; trust only large ratios, and rerun on a quiet machine.**\n\n"
        )
    return warn


def run_settings(args, argv, res: dict) -> dict:
    """The command, the configuration and the timing as written with the results."""
    cfg = res["cfg"]
    command = "python " + " ".join(
        shlex.quote(a) for a in ["bench/train_step.py", *(sys.argv[1:] if argv is None else argv)]
    )
    return {
        "command": command,
        "config": cfg.name,
        "image_size": cfg.data.size,
        "batch": cfg.train.batch_size,
        "stages_K": cfg.model.stages,
        "shared_unet": cfg.model.shared,
        "parameters": res["parameters"],
        "threads": args.threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "batches (training steps 0..)": ", ".join(res["batches"]),
        "warmup_steps": args.warmup,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "step": "forward + unfolding_loss + backward + clip_grad_norm + Adam + EMA (trainer.py's step)",
        "timing": "median over rounds of the mean s/step over the batches; variants interleaved, "
        "order rotated per round",
        "weights": f"random (seed {args.seed}, every parameter + 0.02 N(0,1))",
        "grad_minibatch_noise_rel_l2": res["grad_minibatch_noise"],
        "compile_warmup_s": round(res["compile_s"], 1) if res["compile_s"] else None,
        "load_average_before_timing": res["load_before_timing"],
        "load_average_after": res["load_after"],
        "wall_s": round(res["wall_s"], 1),
    }
