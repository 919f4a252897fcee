"""Experiment (not in the runtime): per-channel offsets (grey-world: each channel's least-squares
level in y moved to 0.5) before the solve, taken off after. Run from the repository root:
    python bench/results/real-data/image-small-all-held-out/grey_world_experiment.py FOLDER N"""
import sys, numpy as np
sys.path.insert(0, "bench"); sys.path.insert(0, "sdk")
import quality as Q
from diffunfold.data import held_out as ho
from diffunfold.metrics import psnr
from diffunfold.package import ModelPackage
from diffunfold.runtime.solver import Solver
folder = sys.argv[1]; n = int(sys.argv[2])
names, x = ho.held_out_photos(folder, 64, n)
solver = Solver.load(ModelPackage.open("samples/models/image-small"))
s = Q.Settings(images=n)
for key in ("inpainting_60", "sr_x8"):
    for level in (0.0, 0.05):
        case = Q.make_case(Q.TASK_BY_KEY[key], level, names, x, s, 0, 15)
        ones = case.op.A(np.ones((1, 3, 64, 64), np.float32))
        w = ones * ones
        m = (case.y * ones).sum(axis=(2, 3), keepdims=True) / w.sum(axis=(2, 3), keepdims=True)   # (B, 3, 1, 1)
        off = 0.5 - m
        plain = np.asarray(solver.solve(case.y, case.op, seed=case.seeds, samples=4, noise_std=case.noise_std, contrast="none").images)
        yg = (case.y + off * ones).astype(np.float32)
        grey = np.clip(np.asarray(solver.solve(yg, case.op, seed=case.seeds, samples=4, noise_std=case.noise_std, contrast="none").images) - off, 0, 1)
        # note: the solver clips to [0, 1] before the offset comes off; fine for an experiment
        p0 = [psnr(plain[i], x[i], 1.0) for i in range(n)]; p1 = [psnr(grey[i], x[i], 1.0) for i in range(n)]
        print(key, level, f"plain {np.mean(p0):.2f} grey-world {np.mean(p1):.2f}", np.round(np.array(p1) - np.array(p0), 2), flush=True)
