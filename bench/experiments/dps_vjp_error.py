"""How far DPS's finite-difference JVP is from the exact VJP through a trained denoiser.

DPS needs ``J^T g`` (``J = dD/dx``, ``g`` the residual norm's gradient); ONNX Runtime has no
autograd, so the runtime takes the JVP ``J g`` by central (or forward) differences, which equals
``J^T g`` when ``J`` is symmetric, as the ideal denoiser's is (``diffunfold.runtime.zero_shot.dps``).
This measures, on a denoiser package and validation photos noised to each level ``s``, with DPS's
own ``g`` for a Gaussian blur at sigma_y 0.05:

* ``fd``: the finite difference's own error, ``||FD - J g|| / ||J g||`` (``J g`` by torch autograd);
* ``asym``: the network's Jacobian asymmetry, ``||J g - J^T g|| / ||J^T g||``;
* ``total``: what DPS gets wrong, ``||FD - J^T g|| / ||J^T g||``, and the cosine between them.

With ``--dps-steps N`` it also runs DPS end to end both ways (the runtime's FD on ONNX Runtime, the
torch reference's autograd) on the photos and reports both PSNRs.

    PYTHONPATH=sdk python bench/experiments/dps_vjp_error.py samples/models/image-denoiser \\
        --photos /tmp/val/held-out --images 2 --size 64 --out bench/results/zero-shot/dps-vjp.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SIGMAS = (0.01, 0.05, 0.2, 1.0, 5.0, 20.0, 80.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/experiments/dps_vjp_error.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("package", help="a denoiser package with model.safetensors")
    p.add_argument("--photos", required=True, help="validation photos (make_validation_folder.py's OUT/held-out)")
    p.add_argument("--images", type=int, default=2, help="photos (default 2)")
    p.add_argument("--size", type=int, default=64, help="image side in px (default 64)")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS), help=f"noise levels (default {SIGMAS})")
    p.add_argument("--dps-steps", type=int, default=0, help="also run DPS end to end with this many steps")
    p.add_argument("--out", help="write the Markdown report here")
    return p.parse_args(argv)


def torch_model(package):
    from safetensors.torch import load_file

    from diffunfold.training.model import DiffUnfolding, ModelSettings

    model = DiffUnfolding(ModelSettings.from_dict(package.settings))
    model.load_state_dict(load_file(str(package.file(package.torch_weights_file))))
    return model.float().eval()


def errors(solver, model, problem, x, s: float, difference: str) -> dict:
    """The three relative errors (module docstring) at one level, for a batch ``x`` (model space)."""
    import torch

    from diffunfold.runtime.zero_shot.dps import DPSSettings, _norm_gradient, guidance

    d, fd, _ = guidance(problem, x, s, DPSSettings(difference=difference))
    g = torch.from_numpy(np.ascontiguousarray(_norm_gradient(problem, d)))
    xt = torch.from_numpy(x)
    sv = torch.full((x.shape[0],), float(s))

    def f(v):
        return model.regularize(v, sv, 0)

    _, jtg = torch.autograd.functional.vjp(f, xt, g)
    _, jg = torch.autograd.functional.jvp(f, xt, g)
    fd, jtg, jg = (np.asarray(a, dtype=np.float64) for a in (fd, jtg.numpy(), jg.numpy()))

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    cos = float(np.sum(fd * jtg) / (np.linalg.norm(fd) * np.linalg.norm(jtg)))
    return {"fd": rel(fd, jg), "asym": rel(jg, jtg), "total": rel(fd, jtg), "cos": cos}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import torch

    from diffunfold.data.held_out import held_out_photos
    from diffunfold.physics import make_operator
    from diffunfold.runtime import Solver
    from diffunfold.runtime.solution import Timing
    from diffunfold.runtime.tiling import TilePlan
    from diffunfold.runtime.zero_shot.common import Problem

    torch.set_num_threads(1)
    solver = Solver.load(a.package, backend="onnxruntime")
    model = torch_model(solver.package)
    names, photos = held_out_photos(a.photos, a.size, a.images)
    op = make_operator("gaussian_blur", (a.size, a.size), sigma=2.0)
    y = op.measure(photos, 0.05, seed=list(range(len(photos)))).astype(np.float32)
    timing = Timing()
    problem = Problem(
        lambda v, s: solver._regularize(v, s, 0, timing, TilePlan(None)),
        op, y, np.full(len(photos), 0.05), solver.space, list(range(len(photos))),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    lines = [
        f"# DPS's finite-difference JVP against autograd: {a.package}, {len(names)} photos at {a.size} px",
        "",
        f"command: `{' '.join(sys.argv)}`",
        "",
        "| s | difference | fd error | Jacobian asymmetry | total | cosine |",
        "|---|---|---|---|---|---|",
    ]
    for s in a.sigmas:
        x = (solver.space.to_model(photos) + s * rng.standard_normal(photos.shape)).astype(np.float32)
        for difference in ("central", "forward"):
            e = errors(solver, model, problem, x, s, difference)
            lines.append(
                f"| {s:g} | {difference} | {e['fd']:.2e} | {e['asym']:.2e} | {e['total']:.2e} | {e['cos']:.5f} |"
            )
            print(lines[-1], flush=True)
    if a.dps_steps:
        lines += ["", *end_to_end(solver, model, photos, y, op, a.dps_steps)]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


def end_to_end(solver, model, photos, y, op, steps: int) -> list[str]:
    """DPS both ways on the same measurements and seeds: PSNR per photo."""
    import torch

    from diffunfold.metrics import psnr
    from diffunfold.training.zero_shot_reference import restore

    fd = solver.solve(y, op, method="dps", steps=steps, seed=0, noise_std=0.05)
    exact = restore(model, torch.from_numpy(y), op, "dps", seed=0, steps=steps, noise_std=0.05)
    p_fd = psnr(np.asarray(fd.images), photos, 1.0)
    p_ex = psnr(exact.images.numpy(), photos, 1.0)
    gap = float(np.abs(np.asarray(fd.images) - exact.images.numpy()).max())
    return [
        f"DPS end to end ({steps} steps, Gaussian blur sigma 2, sigma_y 0.05): PSNR with the finite "
        f"difference (ONNX Runtime) {np.round(p_fd, 2).tolist()}, with autograd (torch) "
        f"{np.round(p_ex, 2).tolist()}; largest pixel difference {gap:.3f}"
    ]


if __name__ == "__main__":
    sys.exit(main())
