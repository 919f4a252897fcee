"""FP16 TensorRT engines for a GPU target, then a restoration on them (NVIDIA GPU only).

    python samples/tensorrt_engines.py --list                        the shipped GPU targets
    python samples/tensorrt_engines.py --out out/trt                 target chosen for this GPU
    python samples/tensorrt_engines.py --target h100 --cuda-graphs --out out/trt

Needs an NVIDIA GPU with its driver, TensorRT 10 and CuPy: ``pip install -e '.[trt,gpu]'``
(``.[trt]`` is TensorRT; ``.[gpu]`` is CuPy for CUDA 12, ``.[gpu-cuda13]`` for CUDA 13).
Without them the sample stops at once and says which is missing (``--list`` works anywhere).

1. ``diffunfold.engines.build_engines(package, target, out_dir=...)`` builds one engine per
   regulariser ONNX of the package on this GPU: FP16, with normalisation, attention softmax and
   the EDM preconditioning kept in FP32, and the target's optimisation profiles (batch and image
   size ranges, ``engines/targets/<target>.toml``). Each engine gets a JSON record (TensorRT
   version, GPU, ONNX sha256). Engines go to ``--out/engines/<target>``, outside the package;
   if usable ones are already there, they are reused.
2. ``Solver.load(package, backend="tensorrt", device="cuda:0", engines=DIR)`` checks the records
   (same ONNX, same TensorRT, same GPU) before deserialising anything, and the solver runs the
   physics on CuPy arrays around the engine calls.
3. A held-out image is blurred, restored (one warm-up call, then a timed one) and scored; the
   time is split into network / physics / sampler, and the result is compared with ONNX
   Runtime's FP32 one on the CPU (the FP16 engines should agree to well above 30 dB).

Returns the scores and timings; raises ``TensorRTUnavailable`` (a ``SystemExit`` with the
message) when TensorRT, CuPy or a GPU is missing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from diffunfold.data.image_datasets import BundledImages
from diffunfold.data.images import BUNDLED_HELD_OUT, save_image
from diffunfold.engines import build_engines, current_gpu, list_targets, load_target
from diffunfold.errors import InputError
from diffunfold.metrics import psnr
from diffunfold.package import ModelPackage
from diffunfold.physics import make_operator
from diffunfold.runtime import Solver
from diffunfold.runtime.backend_tensorrt import find_engines
from diffunfold.runtime.backends import parse_device

REPO = Path(__file__).resolve().parents[1]
IMAGE_PACKAGE = REPO / "samples" / "models" / "image-small"


class TensorRTUnavailable(SystemExit):
    """TensorRT, CuPy or an NVIDIA GPU is missing. A SystemExit: run as a script, the message is
    printed and the exit status is 1, without a traceback."""


def missing_requirements(gpu_index: int) -> list[str]:
    """What this machine lacks for TensorRT, each with how to get it; empty when all is there."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except Exception:  # not installed, or a wheel whose libnvinfer cannot load
        missing.append(
            "TensorRT (the `tensorrt` Python package, version 10): install it with "
            "`pip install -e '.[trt]'` (NVIDIA's wheels, Linux x86-64 or aarch64)"
        )
    try:
        import cupy  # noqa: F401
    except Exception:
        missing.append(
            "CuPy (the runtime's GPU arrays): `pip install -e '.[gpu]'` for CUDA 12, `'.[gpu-cuda13]'` for CUDA 13"
        )
    try:
        gpu = current_gpu(gpu_index)  # CuPy, else nvidia-smi
    except InputError as exc:  # GPUs are visible, but not this index
        missing.append(str(exc))
    else:
        if gpu is None:
            missing.append(
                "an NVIDIA GPU: none is visible (neither CuPy nor nvidia-smi finds a CUDA device); "
                "TensorRT engines are built on, and run on, an NVIDIA GPU with its driver"
            )
    return missing


def choose_target(gpu) -> str:
    """The shipped target for this GPU: its name in the GPU's name (h100 in "NVIDIA H100 80GB
    HBM3"), else the first with the same compute capability."""
    same_cc = [t for t in list_targets() if t.compute_capability == gpu.compute_capability]
    squashed = gpu.name.lower().replace(" ", "")
    named = [t for t in same_cc if t.name.replace("-", "") in squashed]
    if not (named or same_cc):
        raise InputError(
            f"no shipped target fits {gpu}; write a target .toml for it (see engines/targets/) "
            "and pass --target PATH.toml"
        )
    return (named or same_cc)[0].name


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--package",
        type=Path,
        default=IMAGE_PACKAGE,
        help="an image model package (default: the bundled samples/models/image-small)",
    )
    parser.add_argument(
        "--target",
        help="a GPU target name (see --list) or a target .toml file (default: the shipped target of this GPU)",
    )
    parser.add_argument("--list", action="store_true", help="list the shipped GPU targets and exit")
    parser.add_argument("--device", default="cuda:0", help="the GPU, cuda or cuda:N (default cuda:0)")
    parser.add_argument("--image", default="camera", choices=BUNDLED_HELD_OUT, help="held-out image (default camera)")
    parser.add_argument(
        "--size", type=int, default=64, help="image side (default 64; the targets' profiles take 64..512)"
    )
    parser.add_argument("--steps", type=int, default=18, help="sampler steps (default 18)")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay each engine call as a CUDA graph")
    parser.add_argument("--no-compare", action="store_true", help="skip the ONNX Runtime (CPU) comparison")
    parser.add_argument("--out", type=Path, default=Path("out/trt"), help="engines and PNGs go here")
    args = parser.parse_args(argv)

    if args.list:
        targets = list_targets()
        for t in targets:
            print(t.summary())
        return {"targets": [t.name for t in targets]}

    kind, index = parse_device(args.device)
    missing = missing_requirements(index) if kind == "cuda" else ["a CUDA device: --device must be cuda or cuda:N"]
    if missing:
        raise TensorRTUnavailable(
            "this sample needs TensorRT on an NVIDIA GPU; missing here:\n  - "
            + "\n  - ".join(missing)
            + "\nOn a CPU, use backend='onnxruntime' (samples/restore_one_image.py)."
        )

    import tensorrt

    gpu = current_gpu(index)
    target = load_target(args.target or choose_target(gpu))
    engines = args.out / "engines" / target.name
    package = ModelPackage.open(args.package)  # checks every file's sha256 once
    print(f"GPU {gpu}, TensorRT {tensorrt.__version__}; target {target.name}: {target.description}")
    try:  # engines of an earlier run are reused when their records still match this package, GPU and TensorRT
        find_engines(package, gpu, str(tensorrt.__version__), engines)
        built = []
        print(f"reusing the engines in {engines}")
    except InputError as why:
        print(f"no usable engines in {engines} yet ({str(why).splitlines()[0]}); building")
        # Minutes on a cold timing cache (engines/built/<target>.timing.cache), seconds on a warm one.
        built = build_engines(package, target, out_dir=engines, device=index)
    # The records are checked again here, before a byte of an engine is deserialised.
    solver = Solver.load(package, backend="tensorrt", device=args.device, engines=engines, cuda_graphs=args.cuda_graphs)
    print(f"backend: {solver.backend_name}")

    held_out = BundledImages(size=args.size, split="val")
    x = held_out[held_out.names.index(args.image)][None]
    op = make_operator("gaussian_blur", x.shape[-2:], sigma=2.0)
    y = op.measure(x, noise_std=0.05, seed=0).astype(np.float32)

    # numpy in, numpy out: the solver moves y to the GPU once and the result back once.
    solver.solve(
        y, op, steps=args.steps, seed=0, noise_std=0.05
    )  # warm-up: CUDA contexts, first launches, graph capture
    t0 = time.perf_counter()
    solution = solver.solve(y, op, steps=args.steps, seed=0, noise_std=0.05)
    wall = time.perf_counter() - t0
    restored = np.asarray(solution.images)
    result = {
        "target": target.name,
        "gpu": str(gpu),
        "engines": str(engines),
        "built_s": [r.build_seconds for r in built],
        "psnr": float(psnr(restored[0], x[0], 1.0)),
        "timing": solution.timing.as_dict(),
        "wall_s": wall,
    }
    print(f"{args.image} {args.size}x{args.size}, Gaussian blur sigma 2, noise 0.05: PSNR {result['psnr']:.2f} dB")
    print(f"  {args.steps} steps x K={solver.stages}: {solution.timing.network_calls} engine calls; {solution.timing}")

    if not args.no_compare:
        cpu = Solver.load(package, backend="onnxruntime", device="cpu")
        t0 = time.perf_counter()
        reference = np.asarray(cpu.solve(y, op, steps=args.steps, seed=0, noise_std=0.05).images)
        result["onnxruntime_cpu_s"] = time.perf_counter() - t0
        # Same seed, same start: the difference is FP16 engines against FP32 ONNX Runtime.
        result["psnr_vs_onnxruntime"] = float(psnr(restored[0], reference[0], 1.0))
        print(
            f"  ONNX Runtime FP32 on the CPU: {result['onnxruntime_cpu_s']:.2f} s "
            f"(x{result['onnxruntime_cpu_s'] / max(wall, 1e-9):.1f} the GPU's time); the two restorations "
            f"agree to {result['psnr_vs_onnxruntime']:.1f} dB PSNR"
        )
    result["files"] = {"restored": str(save_image(args.out / "restored.png", restored[0]))}
    return result


if __name__ == "__main__":
    main()
