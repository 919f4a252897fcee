"""The machine's achievable matrix-multiply rate, measured now, for the benchmark's floor.

One library's GEMM is not the machine's: on the 2-core EPYC here numpy's OpenBLAS sgemm reached
243 GFLOP/s while ONNX Runtime's MLAS ran the U-Net's convolutions faster than that, so a floor
from numpy alone let ONNX Runtime pass 100 %. So the rate is the best of every GEMM at hand,
each on the same square matrices, in the precision the benchmark's rows compute in:

- ``fp32``: numpy (its BLAS), torch (oneDNN/MKL), ONNX Runtime (MLAS) and OpenVINO f32, each
  on one MatMul;
- ``bf16``: torch and OpenVINO with bf16 inference precision, where the CPU has native bf16
  (AVX-512 BF16 or AMX). Elsewhere both emulate it (torch at about 0.6 GFLOP/s on a Zen 3 core,
  so n = 2048 would take minutes per library): there it is measured at the smallest size only,
  and the result says ``emulated``.

Libraries that are not installed are skipped and named. 2 FLOPs per multiply-add.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SIZES = (512, 1024, 2048)
REPEATS = 5


def _best_rate(run: Callable[[], object], n: int, repeats: int) -> float:
    run()  # warm-up: threads, pages, kernel selection
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _matmul_onnx(path: Path, n: int) -> Path:
    import onnx
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def _numpy(n, a, b, precision, tmp):
    return (lambda: a @ b) if precision == "fp32" else None


def _torch(n, a, b, precision, tmp):
    import torch

    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    ta, tb = torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype)
    return lambda: torch.mm(ta, tb)


def _onnxruntime(n, a, b, precision, tmp):
    if precision != "fp32":
        return None  # ONNX Runtime has no bf16 GEMM on the CPU
    import onnxruntime as ort

    sess = ort.InferenceSession(str(_matmul_onnx(tmp / f"mm{n}.onnx", n)), providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"a": a, "b": b})


def _openvino(n, a, b, precision, tmp):
    import openvino  # noqa: F401  (ImportError: skipped)

    from diffunfold.runtime.backend_openvino import shared_core

    core = shared_core()  # a Core of its own would leave this thread a dangling signal stack when freed
    hint = "bf16" if precision == "bf16" else "f32"
    compiled = core.compile_model(str(_matmul_onnx(tmp / f"mm{n}.onnx", n)), "CPU", {"INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    return lambda: request.infer({"a": a, "b": b})


LIBRARIES = {"numpy": _numpy, "torch": _torch, "onnxruntime": _onnxruntime, "openvino": _openvino}


def measure(precision: str = "fp32", sizes=SIZES, repeats: int = REPEATS) -> dict:
    """``{"gflops": best, "library": its name, "size": its n, "per_library": {lib: {n: GFLOP/s}},
    "skipped": {lib: why}}`` for ``precision`` ``fp32`` or ``bf16``."""
    from diffunfold.hardware import has_native_bf16

    emulated = precision == "bf16" and not has_native_bf16()
    if emulated:
        sizes = tuple(sizes)[:1]
    rng = np.random.default_rng(0)
    per: dict[str, dict[int, float]] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lib, make in LIBRARIES.items():
            for n in sizes:
                a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
                try:
                    run = make(n, a, b, precision, Path(tmp))
                except ImportError as e:
                    skipped[lib] = f"not installed ({e.name})"
                    break
                if run is None:
                    skipped[lib] = f"no {precision} GEMM"
                    break
                per.setdefault(lib, {})[n] = _best_rate(run, n, repeats)
    lib, n = max(((lib, n) for lib, r in per.items() for n in r), key=lambda k: per[k[0]][k[1]])
    return {
        "gflops": per[lib][n],
        "library": lib,
        "size": n,
        "per_library": per,
        "skipped": skipped,
        "emulated": emulated,
    }


def describe(m: dict) -> str:
    rates = "; ".join(
        f"{lib} " + ", ".join(f"{n}: {g:.0f}" for n, g in r.items()) for lib, r in m["per_library"].items()
    )
    emulated = ", emulated: this CPU has no native bf16" if m.get("emulated") else ""
    return f"{m['gflops']:.0f} GFLOP/s ({m['library']}, n = {m['size']}{emulated}; GFLOP/s per library and n: {rates})"
