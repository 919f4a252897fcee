"""Attention before and after: one regulariser call with the spelled-out attention
(MatMul-Softmax-MatMul, the packages before) and with the fused node (``com.microsoft::
MultiHeadAttention``, new exports), on ONNX Runtime and OpenVINO, at several sizes; and the
fused form without attention at the H/4 level (``fused-h8``), the cost side of whether that
level earns its place (the quality side: ``bench/variants.py --from-scratch``).

The same random weights of ``--preset`` are exported in both forms (``fused-h8``: the preset
without the H/4 attention blocks, its own random weights). Each case runs in a fresh
process (so its peak memory is its own): it loads the backend, runs one warm-up call and then
``--repeats`` timed calls of a batch at one size, and reports the median time per call and the
process's peak resident memory (``ru_maxrss``), absolute and above the memory after loading.
Cases are interleaved (for each size and backend: spelled, fused, fused-h8), so the ratios compare
neighbours in time.

    python bench/attention.py                                  # 64 128 256 512 px, batch 1; 256 px batch 8
    python bench/attention.py --size 64 128 --repeats 2 --no-write
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt_number, markdown_table, peak_memory_mb, reset_peak_memory  # noqa: E402
from machine import LoadWatch, add_output_arguments, machine_info, record  # noqa: E402

# name: (how attention is exported, model overrides). "fused-h8" is the question of issue 16:
# does attention at the H/4 level earn its cost? The same preset without it (H/8 and the middle
# only), fused. Its quality at an equal training budget: bench/variants.py --from-scratch.
FORMS = {
    "spelled": ("spelled", ()),
    "fused": ("fused", ()),
    "fused-h8": ("fused", ("model.unet.attention_levels=[3]",)),
}


def child(pkg_path: str, backend: str, size: int, batch: int, repeats: int) -> dict:
    """One case, in this process: ``{ms_per_call, peak_mb, loaded_mb}``: the peak resident
    memory from the first call on (the high-water mark is reset after loading, so the imports'
    transient peak does not hide the call's), and the resident memory once loaded."""
    import numpy as np

    from diffunfold.runtime import Solver

    options = {"precision": "bf16"} if backend == "openvino" else {}
    be = Solver.load(pkg_path, backend=backend.split(":")[0], **options).backend
    x = 0.5 * np.random.default_rng(0).standard_normal((batch, be.package.space.model_channels, size, size))
    x = x.astype(np.float32)
    loaded = reset_peak_memory()
    be.regularize(x, 1.0, 0)  # warm-up: the compile (OpenVINO), allocations
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = be.regularize(x, 1.0, 0)
        times.append(time.perf_counter() - t0)
    assert np.all(np.isfinite(r))
    peak = peak_memory_mb()
    return {"ms_per_call": 1e3 * statistics.median(times), "peak_mb": peak, "loaded_mb": loaded}


def run_case(pkg_path: Path, backend: str, size: int, batch: int, repeats: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", str(pkg_path), backend, str(size), str(batch), str(repeats)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def cases(args) -> list[tuple[int, int]]:
    out = [(s, 1) for s in args.size]
    out += [(args.big_size, b) for b in args.big_batch]
    return out


def run(args) -> list[dict]:
    rows = []
    from common import random_model

    from diffunfold.export import export_model

    with tempfile.TemporaryDirectory(prefix="diffunfold-attention-") as tmp:
        pkgs = {}
        for form, (attention, overrides) in FORMS.items():
            pkgs[form] = export_model(
                random_model(args.preset, overrides=overrides),
                Path(tmp) / form,
                attention=attention,
                log=lambda s: None,
            ).path
        for size, batch in cases(args):
            for backend in args.backends:
                pair = {}
                for form in FORMS:
                    res = run_case(pkgs[form], backend, size, batch, args.repeats, args.timeout)
                    row = {"size": size, "batch": batch, "backend": backend, "attention": form, **res}
                    pair[form] = row
                    rows.append(row)
                    print(
                        " ".join(f"{k}={fmt_number(v) if isinstance(v, float) else v}" for k, v in row.items()),
                        flush=True,
                    )
                ratios(pair)
    return rows


def ratios(pair: dict) -> None:
    """Time and memory above loaded of each form over the spelled-out form's, in place."""
    a = pair["spelled"]
    for form in FORMS:
        b = pair[form]
        if form != "spelled" and "ms_per_call" in a and "ms_per_call" in b:
            b["time_ratio"] = b["ms_per_call"] / a["ms_per_call"]
            b["peak_ratio"] = (b["peak_mb"] - b["loaded_mb"]) / max(a["peak_mb"] - a["loaded_mb"], 1e-9)


def to_markdown(rows: list[dict], args) -> str:
    for r in rows:
        if "peak_mb" in r:
            r["above_loaded_mb"] = r["peak_mb"] - r["loaded_mb"]
    cols = [
        "size",
        "batch",
        "backend",
        "attention",
        "ms_per_call",
        "peak_mb",
        "above_loaded_mb",
        "time_ratio",
        "peak_ratio",
        "error",
    ]
    heads = [
        "px",
        "batch",
        "backend",
        "attention",
        "ms / call",
        "peak RSS MB",
        "peak above loaded MB",
        "time / spelled",
        "memory above loaded / spelled",
        "error",
    ]
    shown = [{c: fmt_number(r.get(c)) for c in cols} for r in rows]
    return (
        f"One regulariser call of the `{args.preset}` preset (random weights), median of {args.repeats} after a "
        "warm-up, each case in a fresh process; peak RSS = the process's high-water mark from the first call on "
        "(Python, the libraries, the weights and the calls), 'above loaded' = minus the RSS once the backend "
        "was loaded. OpenVINO in bf16. "
        "Forms: `spelled` MatMul-Softmax-MatMul, `fused` one MultiHeadAttention node, `fused-h8` the fused form "
        "without attention at the H/4 level (H/8 and the middle only).\n\n"
        + markdown_table(shown, cols, heads, fmt=str)
    )


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench/attention.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="small")
    ap.add_argument("--size", type=int, nargs="+", default=[64, 128, 256, 512], help="sizes at batch 1")
    ap.add_argument("--big-size", type=int, default=256, help="the size of the larger batches (default 256)")
    ap.add_argument("--big-batch", type=int, nargs="*", default=[8], help="larger batches at --big-size (default 8)")
    ap.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"], choices=["onnxruntime", "openvino"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per case (default 600)")
    add_output_arguments(ap)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        path, backend, size, batch, repeats = argv[1:6]
        print(json.dumps(child(path, backend, int(size), int(batch), int(repeats))))
        return 0
    args = parse_args(argv)
    watch, info = LoadWatch(), machine_info()
    rows = run(args)
    record("attention", watch, info, args, rows, to_markdown(rows, args), "Attention: spelled out against fused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
