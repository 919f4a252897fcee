"""The command line: ``python bench/quality.py PACKAGE ... [options]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffunfold import edm
from diffunfold.errors import InputError

from .harness import run
from .tasks import IMAGE_NOISE, MRI_NOISE, TASK_BY_KEY

RESULTS = Path(__file__).resolve().parents[1] / "results"


HELP = """\
Score model packages side by side against strong classical baselines on held-out data.

Each PACKAGE is a model package folder (with manifest.json) or a training run folder /
checkpoint, which is exported to a temporary package first (needs torch: the train and export
extras). Packages are scored on the tasks of their data kind; packages of one kind share the
data, measurements and baselines. Give the packages before options that take several values
(--noise, --mri-noise).

Reading the tables:
  oracle          a baseline marked "(oracle)" chooses its regularisation weight per image by
                  PSNR against the ground truth (CG-SENSE also its iteration count). No real
                  method knows the truth: an oracle is an upper bound on that classical method.
  residual        ||A x_hat - y|| / ||y||: how far the estimate, as returned (images clipped to
                  [0, 1]), is from explaining the measurement.
  noise residual  ||A x - y|| / ||y|| of the ground truth: exactly the realised noise. A good
                  estimate has a residual near it; far below it the estimate fits the noise,
                  far above it the estimate ignores the data. (ESPIRiT-based L1: residual under
                  the estimated maps, the model that method solved.)
  best baseline   the baseline with the highest mean PSNR for that task and noise level.
  gain            PSNR of the posterior mean minus the best baseline's.

A full run (64 px, 5 images, 4 samples, 18 steps) takes about 14 minutes for an image package
and 10 for an MRI package on 2 busy cores (bench/README.md); --quick (1 image, 2 tasks and 2
noise levels per kind, 4 steps, 2 samples, small grids) takes ~15 s and is what the tests run.
"""


def _add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """How each package samples: draws, images, size, steps and the sampler's settings."""
    p.add_argument(
        "--samples",
        type=int,
        help="posterior samples per image; their mean is scored next to one sample (default 4; --quick 2)",
    )
    p.add_argument("--images", type=int, help="held-out images per task (default 5; --quick 1)")
    p.add_argument("--size", type=int, help="image size in px (default 64, the training size)")
    p.add_argument(
        "--schedule",
        choices=["fast", "full"],
        help="image packages: fast (a few steps from the classical estimate) or full (18 steps from "
        "noise); default: each package's own (fast where its manifest has it)",
    )
    p.add_argument("--steps", type=int, help="sampler steps (default: the package's schedule; --quick 4)")
    p.add_argument(
        "--sampler",
        choices=edm.SAMPLERS,
        help="sampler for every package (default: each package's own, see its manifest); heun "
        "makes two network calls per step but the last, so compare at equal calls "
        "(e.g. heun --steps 10 against euler 18); native: each package's formulation's own "
        "solver (EDM's Table 1: Euler in VP's or VE's t, Heun for EDM); ancestral: DDPM's stochastic "
        "sampler; pc: the score-SDE predictor-corrector",
    )
    p.add_argument(
        "--sigma-min",
        type=float,
        help="the sampler's last noise level, where the final denoiser call is made (default: the package's, 0.002)",
    )
    p.add_argument(
        "--churn",
        type=float,
        metavar="S_CHURN",
        help="EDM's stochastic sampler with this S_churn for every package (default: each "
        "package's own, see its manifest; 0: the deterministic ODE)",
    )
    p.add_argument(
        "--ensemble",
        choices=["none", "flips"],
        help="self-ensemble of the posterior samples for every package: flips gives sample j's "
        "network the j-th of four flips of the image (default: each package's own)",
    )
    p.add_argument(
        "--contrast",
        choices=["none", "stretch", "colour"],
        help="contrast stretch of flat images for every image package: restored at a photo's "
        "contrast and mapped back, exactly through the physics; colour: also each colour "
        "channel's level to mid-grey (default: each package's own)",
    )


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    """What is scored: the tasks, the noise levels, the held-out data and the seed."""
    p.add_argument(
        "--task",
        dest="tasks",
        action="append",
        metavar="KEY",
        help=f"score only this task (repeatable): {', '.join(TASK_BY_KEY)}",
    )
    p.add_argument("--noise", type=float, nargs="+", help=f"image noise levels sigma_y (default {IMAGE_NOISE})")
    p.add_argument(
        "--mri-noise",
        type=float,
        nargs="+",
        help=f"MRI noise levels as fractions of max|A x| per image (default {MRI_NOISE})",
    )
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (the tests' setting)")
    p.add_argument(
        "--photos",
        metavar="DIR",
        help="held-out photos: DIR/held-out of `diffunfold data photos` (default: the scikit-image photos)",
    )
    p.add_argument(
        "--mri-volumes",
        metavar="DIR",
        help="held-out MRI volume(s): DIR/held-out of `diffunfold data mri-volumes` (default: synthetic phantoms)",
    )
    p.add_argument("--coils", type=int, default=15, help="simulated receive coils for MRI (default 15)")
    p.add_argument(
        "--lpips",
        default="data/lpips",
        metavar="DIR",
        help="LPIPS weights (`diffunfold data lpips DIR`): image rows then report PSNR / SSIM / LPIPS "
        "(default data/lpips; without the weights, or with 'none', PSNR / SSIM only, and the report says why)",
    )
    p.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed + i (default 0)")


def _add_comparison_arguments(p: argparse.ArgumentParser) -> None:
    """The other methods of the comparison table (quality-methods-<kind>.md)."""
    p.add_argument(
        "--zero-shot",
        metavar="PACKAGE",
        help="an unconditional EDM denoiser package (model.kind = 'denoiser'): its zero-shot solvers "
        "(DPS, DiffPIR, PnP-EDM; DDS for MRI) join the comparison on the same cases",
    )
    p.add_argument(
        "--method",
        dest="methods",
        action="append",
        metavar="NAME",
        help="with --zero-shot: only this solver (repeatable; default: every one that fits the data kind)",
    )
    p.add_argument(
        "--learned",
        action="append",
        metavar="MODULE:CHECKPOINT",
        help="a learned baseline of bench/learned_baselines (repeatable), e.g. "
        "cedm:runs/cedm-gaussian-blur or varnet:runs/varnet-g1d4; scored on the operators it was trained for",
    )


def _add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """Where the packages run and where the results go."""
    p.add_argument("--backend", default="onnxruntime", help="runtime backend (default onnxruntime)")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the backend (0: all cores)")
    p.add_argument("--out", default=str(RESULTS), help="folder for the results (default bench/results)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no tables on stdout")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/quality.py", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("packages", nargs="+", metavar="PACKAGE", help="model package folders, run folders or checkpoints")
    _add_sampling_arguments(p)
    _add_data_arguments(p)
    _add_comparison_arguments(p)
    _add_runtime_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
