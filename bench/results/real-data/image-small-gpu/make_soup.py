"""A uniform weight average ("model soup") of image-small U-Nets that share one start, exported
as make_pkg.py does (tau = gamma = 1, float16-stored weights)."""
import argparse, dataclasses
import torch
from diffunfold.export import export_model
from diffunfold.training.config import load_config
from diffunfold.training.model import DiffUnfolding
from diffunfold.training.package_weights import initialise_from
p = argparse.ArgumentParser()
p.add_argument("out"); p.add_argument("sources", nargs="+")
p.add_argument("--weights", type=float, nargs="+")
p.add_argument("--noise-floor", type=float, default=1e-6)
a = p.parse_args()
cfg = load_config("small")
cfg.model.unet = dataclasses.replace(cfg.model.unet, attention_levels=(3,))
cfg.model.noise_floor = a.noise_floor
w = a.weights or [1.0 / len(a.sources)] * len(a.sources)
models = []
for s in a.sources:
    m = DiffUnfolding(cfg.model); initialise_from(m, s); models.append(m)
model = DiffUnfolding(cfg.model)
state = model.state_dict()
for k in state:
    if k.startswith(("regularizers.", "uncertainty.")) and state[k].is_floating_point():
        state[k] = sum(wi * m.state_dict()[k] for wi, m in zip(w, models))
model.load_state_dict(state)
export_model(model.eval(), a.out, tasks=list(cfg.data.tasks), fp16_weights=True, torch_weights=False, overwrite=True,
             source={"run": "soup", "weights": "uniform average of " + ", ".join(a.sources), "preset": "small",
                     "weight_generators": "initial (tau = gamma = 1), not trained",
                     "noise_floor": f"{a.noise_floor:g} (an inference setting)"})
