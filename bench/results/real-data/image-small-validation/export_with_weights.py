"""Export a package's U-Net (or a checkpoint's EMA) with its weight generators at constant tau and
gamma (default 1, the bundled package's), noise floor 1e-6, as the bundled image-small was made.

    python export_with_weights.py samples/models/image-small runs/pkg/g4 --gamma 4
"""
import argparse, dataclasses
from diffunfold.export import export_model
from diffunfold.training.config import load_config
from diffunfold.training.model import DiffUnfolding
from diffunfold.training.package_weights import initialise_from
p = argparse.ArgumentParser(); p.add_argument("source"); p.add_argument("out")
p.add_argument("--gamma", type=float, default=1.0); p.add_argument("--tau", type=float, default=1.0)
a = p.parse_args()
cfg = load_config("small")
cfg.model.unet = dataclasses.replace(cfg.model.unet, attention_levels=(3,))
cfg.model.noise_floor = 1e-6
cfg.model.gamma_init = a.gamma; cfg.model.tau_init = a.tau
m = DiffUnfolding(cfg.model); initialise_from(m, a.source)
export_model(m.eval(), a.out, tasks=list(cfg.data.tasks), fp16_weights=True, torch_weights=False, overwrite=True,
             source={"run": f"gamma {a.gamma:g} tau {a.tau:g}", "weights": a.source})
