"""bench/quality.py with EDM's stochastic sampler (Karras et al. 2022, Alg. 2, Euler): before each
step with S_min <= sigma <= S_max, re-noise to sigma_hat = sigma (1 + G) with fresh white noise.
For tau = gamma = 1 packages only (the weights are 1 at any sigma). An experiment.

    python quality_with_churn.py 0.4 0.05 50 samples/models/image-small --photos val/held-out --images 6
"""
import sys, runpy
import numpy as np
from diffunfold import edm
from diffunfold.runtime import solver as S
G, SMIN, SMAX = (float(sys.argv.pop(1)) for _ in range(3))

class Ones(dict):
    def __init__(self, k): super().__init__(); self.k = k
    def __missing__(self, s): return ([1.0] * self.k, [1.0] * self.k)

S.Solver.weights_for = lambda self, sigmas: Ones(self.stages)

def churn_loop(denoise, x, sigmas, sampler="euler", on_step=None):
    rng = np.random.default_rng(20261130)
    nfe = 0
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        g = G if SMIN <= s <= SMAX else 0.0
        s_hat = s * (1 + g)
        if g > 0:
            x = (x + np.sqrt(s_hat ** 2 - s ** 2) * rng.standard_normal(x.shape)).astype(x.dtype)
        d = (x - denoise(x, s_hat)) / s_hat
        nfe += 1
        x = x + (s_next - s_hat) * d
        if on_step is not None:
            on_step(i)
    return x, nfe

edm.sample_loop = churn_loop
sys.argv[0] = "bench/quality.py"
runpy.run_path("bench/quality.py", run_name="__main__")
