"""The runtime (numpy physics + ONNX Runtime) against the torch reference sampler, in one run.

Both restore the same measurements from the same seeds with the same model: the runtime
through ``Solver.solve`` on each backend present (``onnxruntime``, and ``torch`` = the runtime's
loop around torch networks, which separates the loop from the network engine), the reference
through ``diffunfold.training.sampler.restore`` (torch physics and networks). The model is a
package given with ``--package``, or the ``small`` preset with random weights exported on the
spot (speed does not depend on the weights). Reported per (size, batch): median seconds per
image over ``--repeats`` runs, the runtime's breakdown (network / physics / sampler), and the
ratio reference / runtime (> 1: the runtime is faster). The outputs are also compared.

    python bench/runtime_vs_torch.py                      # small preset, 64 px, batch 1 and 4
    python bench/runtime_vs_torch.py --package samples/models/natural --size 128 --batch 1

Results: bench/results/runtime_vs_torch-<machine>.md and .json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, write_results  # noqa: E402

from diffunfold.package import ModelPackage  # noqa: E402
from diffunfold.physics import make_operator  # noqa: E402
from diffunfold.runtime import Solver  # noqa: E402


def random_package(preset: str, directory: Path) -> ModelPackage:
    import torch

    from diffunfold.export import export_model
    from diffunfold.training.config import load_config
    from diffunfold.training.model import DiffUnfolding

    torch.manual_seed(0)
    model = DiffUnfolding(load_config(preset).model)
    with torch.no_grad():  # zero-initialised layers would make parts of the network trivial
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return export_model(model.eval(), directory / preset, tasks=["gaussian_blur"], log=lambda s: None)


def reference_model(pkg: ModelPackage):
    from safetensors.torch import load_file

    from diffunfold.training.model import DiffUnfolding, ModelSettings

    model = DiffUnfolding(ModelSettings.from_dict(pkg.settings))
    model.load_state_dict(load_file(str(pkg.file(pkg.torch_weights_file))))
    return model.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", help="a model package (default: the small preset, random weights)")
    ap.add_argument("--preset", default="small", help="preset for the random-weight model (default small)")
    ap.add_argument("--size", type=int, nargs="+", default=[64])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--task", default="gaussian_blur")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = ap.parse_args(argv)

    import torch

    from diffunfold.training.sampler import restore

    with tempfile.TemporaryDirectory() as tmp:
        pkg = ModelPackage.open(args.package) if args.package else random_package(args.preset, Path(tmp))
        model = reference_model(pkg)
        solvers = {name: Solver.load(pkg, backend=name) for name in ("onnxruntime", "torch")}
        rows = []
        for size in args.size:
            for batch in args.batch:
                op = make_operator(args.task, (size, size))
                rng = np.random.default_rng(0)
                x = rng.uniform(0, 1, (batch, pkg.space.channels, size, size)).astype(np.float32)
                y = op.measure(x, 0.05, seed=list(range(batch)))
                yt = torch.from_numpy(y)
                restore(model, yt, op, steps=2, seed=0)  # warm-up (allocators, thread pools)
                ref_times, ref_out = [], None
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    ref_out = restore(model, yt, op, steps=args.steps, seed=0).images.numpy()
                    ref_times.append(time.perf_counter() - t0)
                ref = statistics.median(ref_times) / batch
                for name, solver in solvers.items():
                    solver.solve(y, op, steps=2, seed=0)
                    runs = [solver.solve(y, op, steps=args.steps, seed=0) for _ in range(args.repeats)]
                    best = sorted(runs, key=lambda r: r.timing.total)[len(runs) // 2]
                    t = best.timing
                    err = float(np.max(np.abs(best.images - ref_out)) / np.max(np.abs(ref_out)))
                    rows.append({"size": size, "batch": batch, "backend": name,
                                 "s_per_image": t.total / batch, "network_s": t.network / batch,
                                 "physics_s": t.physics / batch, "sampler_s": t.sampler / batch,
                                 "reference_s_per_image": ref, "speedup_vs_reference": ref / (t.total / batch),
                                 "max_rel_diff_vs_reference": err})
                    print(f"{size}px batch {batch} {name:12s} {t.total / batch:.3f} s/image "
                          f"(net {t.network / batch:.3f}, physics {t.physics / batch:.3f}, "
                          f"sampler {t.sampler / batch:.4f}); reference {ref:.3f} s/image; "
                          f"speed-up x{ref / (t.total / batch):.2f}; max rel diff {err:.1e}", flush=True)
        info = machine_info()
        info["onnxruntime"] = __import__("onnxruntime").__version__
        settings = {"model": args.package or f"{args.preset} preset, random weights",
                    "parameters": pkg.manifest["parameters"]["total"], "K": pkg.stages,
                    "task": args.task, "steps": args.steps, "sampler": "euler", "repeats": args.repeats,
                    "statistic": "median run; seconds per image"}
        head = ("| size | batch | backend | s/image | network | physics | sampler | torch reference s/image | "
                "speed-up | max rel diff |\n|---|---|---|---|---|---|---|---|---|---|")
        lines = [head] + [
            f"| {r['size']} | {r['batch']} | runtime + {r['backend']} | {r['s_per_image']:.3f} | {r['network_s']:.3f} | "
            f"{r['physics_s']:.3f} | {r['sampler_s']:.4f} | {r['reference_s_per_image']:.3f} | "
            f"x{r['speedup_vs_reference']:.2f} | {r['max_rel_diff_vs_reference']:.1e} |" for r in rows]
        md = "\n".join(lines)
        print(md)
        if not args.no_write:
            print(f"wrote {write_results('runtime_vs_torch', info, settings, rows, md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
