"""bench/quality.py with every package's tau replaced by a calibrated tau(sigma) table (gamma = 1),
interpolated in log sigma: an experiment, not the product.

    python quality_with_tau_table.py calibrated-tau.json samples/models/image-small --photos val/held-out --images 6
"""
import json, sys, runpy
import numpy as np
from diffunfold.runtime import solver as S
table = json.load(open(sys.argv.pop(1)))
ls = np.log(np.array([float(k) for k in table])); tv = np.array(list(table.values()))
order = np.argsort(ls); ls, tv = ls[order], tv[order]
def weights_for(self, sigmas):
    return {float(s): ([float(np.interp(np.log(max(s, 1e-9)), ls, tv))] * self.stages, [1.0] * self.stages) for s in sigmas}
S.Solver.weights_for = weights_for
sys.argv[0] = "bench/quality.py"
runpy.run_path("bench/quality.py", run_name="__main__")
