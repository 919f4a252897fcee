"""bench/quality.py with geometric self-ensemble: posterior sample j's regulariser sees the
image flipped by transform j (identity, left-right, up-down, both) and its output is flipped
back; the data step is untouched. Optionally with churn (G SMIN SMAX as quality_with_churn).

    python quality_with_flips.py CHURN SMIN SMAX PACKAGE ... (CHURN 0: deterministic Euler)
"""
import sys, runpy
import numpy as np
from diffunfold import edm
from diffunfold.runtime import solver as S
G, SMIN, SMAX = (float(sys.argv.pop(1)) for _ in range(3))
NS = 4
FLIPS = [(), (-1,), (-2,), (-2, -1)]

orig_reg = S.Solver._regularize

def flipped_reg(self, x, sigma, k, timing, plan=None):
    b = x.shape[0] // NS
    if b * NS != x.shape[0]:
        return orig_reg(self, x, sigma, k, timing, plan)
    xp = self.xp
    parts = [x[j * b:(j + 1) * b] for j in range(NS)]
    fl = [xp.flip(p, axis=ax) if ax else p for p, ax in zip(parts, FLIPS)]
    r = orig_reg(self, xp.ascontiguousarray(xp.concatenate(fl)), sigma, k, timing, plan)
    rp = [r[j * b:(j + 1) * b] for j in range(NS)]
    return xp.ascontiguousarray(xp.concatenate([xp.flip(p, axis=ax) if ax else p for p, ax in zip(rp, FLIPS)]))

S.Solver._regularize = flipped_reg

if G > 0:
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
