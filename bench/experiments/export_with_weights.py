"""Export a package's U-Net (or a checkpoint's EMA) with its weight generators at a constant tau
and gamma (default 1, the bundled image-small's) and the noise floor 1e-6, as the bundled
image-small was made: the `small` preset with attention at H/8 only, float16-stored weights.

    python bench/experiments/export_with_weights.py samples/models/image-small runs/pkg/g4 --gamma 4

The results: bench/results/real-data/image-small-validation/README.md, sections 2 and 3.
Needs the train and export extras.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/experiments/export_with_weights.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="a model package folder or a training checkpoint (its EMA weights)")
    p.add_argument("out", help="the package folder to write (overwritten)")
    p.add_argument("--gamma", type=float, default=1.0, help="the constant gamma (default 1)")
    p.add_argument("--tau", type=float, default=1.0, help="the constant tau (default 1)")
    return p.parse_args(argv)


def image_small_settings(noise_floor: float = 1e-6, tau: float = 1.0, gamma: float = 1.0):
    """The bundled image-small's training config: ``small``, attention at H/8 only."""
    from diffunfold.training.config import load_config

    cfg = load_config("small")
    cfg.model.unet = dataclasses.replace(cfg.model.unet, attention_levels=(3,))
    cfg.model.noise_floor = noise_floor
    cfg.model.gamma_init, cfg.model.tau_init = gamma, tau
    return cfg


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from diffunfold.export import export_model
    from diffunfold.training.model import DiffUnfolding
    from diffunfold.training.package_weights import initialise_from

    cfg = image_small_settings(tau=a.tau, gamma=a.gamma)
    m = DiffUnfolding(cfg.model)
    initialise_from(m, a.source)
    export_model(
        m.eval(),
        a.out,
        tasks=list(cfg.data.tasks),
        fp16_weights=True,
        torch_weights=False,
        overwrite=True,
        source={"run": f"gamma {a.gamma:g} tau {a.tau:g}", "weights": a.source},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
