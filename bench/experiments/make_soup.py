"""A weight average ("model soup") of image-small U-Nets that share one start, exported as
`export_with_weights.py` exports one (tau = gamma = 1, float16-stored weights): uniform unless
`--weights` gives each source's weight.

    python bench/experiments/make_soup.py runs/pkg/soup-3 runs/pkg/F6 runs/pkg/b32 runs/pkg/b64

The results: bench/results/real-data/image-small-gpu/README.md. Needs the train and export extras.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_with_weights import image_small_settings  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/experiments/make_soup.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out", help="the package folder to write (overwritten)")
    p.add_argument("sources", nargs="+", help="model packages or checkpoints of one architecture")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per source (default: uniform)")
    p.add_argument("--noise-floor", type=float, default=1e-6, help="the package's noise floor (default 1e-6)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from diffunfold.export import export_model
    from diffunfold.training.model import DiffUnfolding
    from diffunfold.training.package_weights import initialise_from

    if a.weights and len(a.weights) != len(a.sources):
        print("error: --weights needs one weight per source", file=sys.stderr)
        return 2
    cfg = image_small_settings(noise_floor=a.noise_floor)
    w = a.weights or [1.0 / len(a.sources)] * len(a.sources)
    models = []
    for s in a.sources:
        m = DiffUnfolding(cfg.model)
        initialise_from(m, s)
        models.append(m)
    model = DiffUnfolding(cfg.model)
    state = model.state_dict()
    for k in state:
        if k.startswith(("regularizers.", "uncertainty.")) and state[k].is_floating_point():
            state[k] = sum(wi * m.state_dict()[k] for wi, m in zip(w, models))
    model.load_state_dict(state)
    export_model(
        model.eval(),
        a.out,
        tasks=list(cfg.data.tasks),
        fp16_weights=True,
        torch_weights=False,
        overwrite=True,
        source={
            "run": "soup",
            "weights": "uniform average of " + ", ".join(a.sources),
            "preset": "small",
            "weight_generators": "initial (tau = gamma = 1), not trained",
            "noise_floor": f"{a.noise_floor:g} (an inference setting)",
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
