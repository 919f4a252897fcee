"""bench/quality.py with geometric self-ensemble: posterior sample j's regulariser sees the
image flipped by transform j (identity, left-right, up-down, both) and its output is flipped
back; the data step is untouched. The experiment behind the runtime's `--ensemble flips`
(which reproduces it); deterministic Euler only.

    python quality_with_flips.py PACKAGE --photos val/held-out --images 6
"""
import sys, runpy
from diffunfold.runtime import solver as S
NS = 4
FLIPS = [(), (-1,), (-2,), (-2, -1)]

orig_reg = S.Solver._regularize

def flipped_reg(self, x, sigma, k, timing, plan=None, groups=None):
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

sys.argv[0] = "bench/quality.py"
runpy.run_path("bench/quality.py", run_name="__main__")
