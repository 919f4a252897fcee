"""Controlled comparison of unfolding variants at an equal training budget.

Every variant starts from the same weights (the regularisers and u of ``--init``, a model
package or checkpoint; tau and gamma fresh), trains the same ``--steps`` on the same batches
(batches depend only on seed and step) with the same learning-rate schedule, and is scored on
the same held-out images, measurements and sampler seeds. Only the model settings differ:

  paper           the paper's eq. 9: gradient data step, weights f(s, k)
  proximal        relax towards R_k, then an exact data-consistency step of learned weight f(s, k)
  proximal-noise  the same with the weight set by the measurement noise sigma_y (MAP weight)
  proximal-noise-weights  the same, training only tau, gamma and u (the networks stay --init's)

Architecture variants (issue 16: does attention at the H/4 level earn its cost?) start from
scratch instead (``--from-scratch``: fresh weights of the same seed, no --init), since their
networks differ in shape:

  attention-h4    the preset's U-Net, attention at H/4, H/8 and the middle (proximal-noise)
  attention-h8    the same without the H/4 attention blocks

Each variant is also scored before training (step 0: --init's networks, tau and gamma at their
initial values) with --at-init. Scores are kept in each run folder (scores.json) and reused
when the run, its steps and the noise levels are unchanged.

Examples (the comparison in the README, about 25 minutes on 2 cores; the attention levels on
the real photos of `diffunfold data photos data/photos`):
  python bench/variants.py --init samples/models/image-small --steps 300
  python bench/variants.py --from-scratch --variants attention-h4 attention-h8 --steps 1500 \
      --name attention-levels-small --set 'data.source="folder"' --set 'data.path="data/photos/train"' \
      --set 'data.val_path="data/photos/held-out"' --set data.native_crops=true

Writes bench/results/variants-<preset>.md/.json (or ``--name``). Training runs go to --runs (git-ignored);
a finished variant is not trained again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {
    "paper": ['model.data_step="gradient"', "model.noise_aware=false", "model.tau_init=0.5", "model.gamma_init=2.0"],
    "proximal": ['model.data_step="proximal"', "model.noise_aware=false", "model.tau_init=1.0", "model.gamma_init=1.0"],
    "proximal-noise": [
        'model.data_step="proximal"',
        "model.noise_aware=true",
        "model.tau_init=1.0",
        "model.gamma_init=1.0",
    ],
    # the same, learning only tau, gamma and u: the regularisers stay those of --init
    "proximal-noise-weights": [
        'model.data_step="proximal"',
        "model.noise_aware=true",
        "model.tau_init=1.0",
        "model.gamma_init=1.0",
        "train.freeze_regularizers=true",
    ],
    # architecture, from scratch (--from-scratch): attention at H/4 or not
    "attention-h4": ['model.data_step="proximal"', "model.noise_aware=true", "model.unet.attention_levels=[2, 3]"],
    "attention-h8": ['model.data_step="proximal"', "model.noise_aware=true", "model.unet.attention_levels=[3]"],
}
# Data shared by every variant: a quarter of the measurements noise-free, a quarter at low noise.
COMMON = ["data.noise_zero_fraction=0.25", "data.noise_log_fraction=0.25"]
IMAGE_TASKS = [
    {"task": "gaussian_blur", "sigma": 2.0},
    {"task": "sr", "factor": 4},
    {"task": "inpainting", "missing": 0.4},
]
MRI_TASKS = [
    {"task": "mri", "kind": "gaussian1d", "acceleration": 4},
    {"task": "mri", "kind": "gaussian2d", "acceleration": 8},
]


def init_architecture(init: str) -> list[str]:
    """Overrides that give a variant the U-Net of ``init`` (a package or a checkpoint), which
    ``train.init_from`` needs: the preset may have changed since ``init`` was trained (the small
    preset dropped attention at H/4 after the bundled models were trained with it)."""
    path = Path(init)
    if (path / "manifest.json").exists():
        unet = json.loads((path / "manifest.json").read_text())["model"]["unet"]
    else:
        unet = json.loads(path.with_suffix(".json").read_text())["config"]["model"]["unet"]
    return [f"model.unet.{k}={json.dumps(v)}" for k, v in unet.items()]


def variant_config(args, name: str):
    from diffunfold.training.config import load_config

    steps = args.steps
    start = [] if args.from_scratch else init_architecture(args.init) + [f'train.init_from="{args.init}"']
    overrides = (
        VARIANTS[name]
        + COMMON
        + start
        + [
            f"train.steps={steps}",
            f"train.decay_steps={steps}",
            f"train.warmup_steps={min(50, steps // 4)}",
            "train.val_every=0",
            f"train.checkpoint_every={steps}",
            f"train.threads={args.threads}",
            f'out_dir="{Path(args.runs) / name}"',
        ]
        + (args.set or [])
    )
    return load_config(args.preset, overrides), overrides


def train_variant(args, name: str) -> tuple[Path, float]:
    from diffunfold.training.checkpoint import latest_checkpoint
    from diffunfold.training.trainer import train

    cfg, _ = variant_config(args, name)
    ckpt = latest_checkpoint(Path(cfg.out_dir) / "checkpoints")
    if ckpt is not None and ckpt.name.endswith(f"{args.steps:08d}.safetensors"):
        return ckpt, float("nan")  # already trained
    t0 = time.perf_counter()
    summary = train(cfg, resume=ckpt is not None, progress=not args.quiet)
    return Path(summary["checkpoint"]), time.perf_counter() - t0


def score(args, model, cfg) -> list[dict]:
    from diffunfold.training.data import validation_set
    from diffunfold.training.evaluate import evaluate

    images, maps = validation_set(cfg)
    rows = []
    tasks = MRI_TASKS if cfg.data.is_mri else IMAGE_TASKS
    for noise in args.noise:  # absolute sigma_y (for MRI, in k-space units)
        for r in evaluate(
            model,
            images,
            tasks,
            noise,
            args.sample_steps,
            "euler",
            seed=args.seed,
            coil_maps=maps,
            samples=1,
            progress=False,
        ):
            rows.append({"noise": noise, **r})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", help="model package or checkpoint whose regularisers every variant starts from")
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="every variant starts from fresh weights (same seed) instead of --init",
    )
    p.add_argument("--preset", default="small", help="training preset (default: small)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=300, help="training steps per variant (default: 300)")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.01, 0.05], help="held-out sigma_y levels")
    p.add_argument("--sample-steps", type=int, default=18, help="sampler steps for scoring (default: 18)")
    p.add_argument("--at-init", action="store_true", help="also score each variant before training (step 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", help="extra table.key=value override for every variant")
    p.add_argument("--runs", default="runs/variants", help="where the training runs go (default: runs/variants)")
    p.add_argument("--out", default="bench/results", help="where the table goes")
    p.add_argument("--name", help="file name of the table (default: variants-<preset>)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if bool(args.init) == args.from_scratch:
        p.error("give either --init (a package or checkpoint to start from) or --from-scratch")

    import torch

    from diffunfold.training.checkpoint import load_model
    from diffunfold.training.model import DiffUnfolding
    from diffunfold.training.package_weights import initialise_from

    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for name in args.variants:
        cfg, overrides = variant_config(args, name)
        cache = Path(cfg.out_dir) / "scores.json"
        key = {"steps": args.steps, "noise": args.noise, "init": args.init, "at_init": args.at_init}
        if cache.exists() and json.loads(cache.read_text()).get("key") == key:
            results[name] = json.loads(cache.read_text())["entry"]
            continue
        entry = {
            "overrides": overrides,
            "command": f"diffunfold train --config {args.preset} " + " ".join(f"--set '{o}'" for o in overrides),
        }
        if args.at_init:
            model = DiffUnfolding(cfg.model)
            if args.init:
                initialise_from(model, args.init)
            entry["at_init"] = score(args, model.eval(), cfg)
        ckpt, seconds = train_variant(args, name)
        model, _ = load_model(ckpt)
        entry.update(checkpoint=str(ckpt), train_seconds=seconds, rows=score(args, model.eval(), cfg))
        results[name] = entry
        cache.write_text(json.dumps({"key": key, "entry": entry}, indent=1))
        print(name, "done", flush=True)
    write(args, results)
    return 0


def write(args, results: dict) -> None:
    from machine import machine_info  # bench/machine.py

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (args.name or f"variants-{args.preset}")
    meta = {
        "command": "python bench/variants.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{machine_info()['cpu']}, {machine_info()['cores']} cores",
        "init": args.init or "from scratch",
        "steps": args.steps,
        "results": results,
    }
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    first = next(iter(results.values()))
    keys = [(r["noise"], r["task"]) for r in first["rows"]]
    head = "| variant | " + " | ".join(f"{t} @ {n}" for n, t in keys) + " |"
    start = f"from {args.init}" if args.init else "from scratch"
    lines = [
        f"# Unfolding variants at an equal budget ({args.steps} steps {start})",
        "",
        f"`{meta['command']}` on {meta['machine']}, {meta['date']}. PSNR (dB) on the held-out images, "
        "one posterior sample, 18 Euler steps; columns are task @ sigma_y.",
        "",
        head,
        "|" + "---|" * (len(keys) + 1),
    ]
    for name, e in results.items():
        for label, rows in (("", e["rows"]), (" (step 0)", e.get("at_init"))):
            if rows:
                lines.append(f"| {name}{label} | " + " | ".join(f"{r['psnr_model']:.2f}" for r in rows) + " |")
    lines.append(
        "| classical baseline | "
        + " | ".join(f"{r['psnr_baseline']:.2f} ({r['baseline_name']})" for r in first["rows"])
        + " |"
    )
    lines += ["", "Commands (each run's training; its wall time on this machine):", ""]
    lines += [f"- {n}: `{e['command']}` ({e['train_seconds']:.0f} s)" for n, e in results.items()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
