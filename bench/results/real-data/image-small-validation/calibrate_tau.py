"""Per schedule sigma, the tau (all stages, gamma = 1) that makes one D call the best denoiser:
mean one-shot PSNR of D(x + sigma eps) over tasks and noise levels, on validation photos.

    python calibrate_tau.py samples/models/image-small val/held-out calibrated-tau.json
"""
import json, numpy as np, sys
from diffunfold import edm
from diffunfold.data.held_out import held_out_photos
from diffunfold.physics import make_operator
from diffunfold.runtime import Solver
from diffunfold.runtime.solver import Timing
from diffunfold.metrics import psnr
names, x = held_out_photos(sys.argv[2], 64, 6)
s = Solver.load(sys.argv[1], backend="onnxruntime"); sp = s.space; xm = sp.to_model(x)
P = lambda a: float(np.mean([psnr(np.clip(sp.to_user(a[i:i+1]), 0, 1), x[i:i+1]) for i in range(len(x))]))
cases = []
for task, kw in [("sr", {"factor": 8}), ("gaussian_blur", {"sigma": 2.0}), ("inpainting", {"missing": 0.4, "seed": 0})]:
    op = make_operator(task, (64, 64), **kw)
    for nz in (0.0, 0.05):
        cases.append((op, op.measure(x, noise_std=nz, seed=0) if nz else op.A(x), np.full(len(x), max(nz, 1e-6) ** 2)))
taus = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
best = {}
for sig in [float(v) for v in edm.schedule(18)[:-1]]:
    xt = (xm + sig * np.random.default_rng(1).standard_normal(xm.shape)).astype(np.float32)
    scores = [np.mean([P(s.denoise(xt, sig, y, op, {sig: ([t] * s.stages, [1.0] * s.stages)}, Timing(), v))
                       for op, y, v in cases]) for t in taus]
    best[sig] = taus[int(np.argmax(scores))]
    print(f"sigma {sig:7.3f} " + " ".join(f"{t}:{v:.2f}" for t, v in zip(taus, scores)), "-> tau", best[sig], flush=True)
json.dump(best, open(sys.argv[3], "w"), indent=1)
