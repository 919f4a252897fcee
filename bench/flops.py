"""The floor: the FLOPs of one regulariser call and the time a perfect use of the hardware would take.

One regulariser call is ``R_k(x; sigma)``: one U-Net forward with the EDM preconditioning
around it, for one image (batch 1) of the given size. Its FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` on a model built on torch's ``meta`` device (no
weights, no arithmetic: instant even for the paper preset). Counted: convolutions and matrix
products (``aten.convolution``, ``mm``/``addmm``, ``bmm`` of the attention), 2 FLOPs per
multiply-add. Not counted: elementwise work (GroupNorm, SiLU, softmax, residual additions, the
preconditioning's scalings), a few percent of the total for these networks, so the floor
is a slight underestimate of the work.

One denoiser call runs the K regularisers (K calls); an 18-step Euler solve calls the
denoiser 18 times (Heun: 2 x 18 - 1). Per image:

    FLOPs per solve = K x NFE x FLOPs per regulariser call
    floor           = FLOPs / peak FLOP/s of the hardware

Peaks. CPU (FP32): physical cores x clock x FLOPs per cycle per core, from ``lscpu``: the
"CPU max MHz" when it is reported, else the current clock from /proc/cpuinfo (virtual
machines often report no maximum: the nominal clock then stands in and boost clocks run
faster); FLOPs per cycle of the detected microarchitecture (``flops_per_cycle``: Zen 4 runs
AVX-512 as two 256-bit halves, 32; Zen 5 server/desktop and two-unit AVX-512 cores 64; AVX2 +
FMA 32; otherwise 8). That nominal peak is printed, never used as "perfect": ``bench/run.py``
measures the machine's matrix-multiply rate in the same run (``bench/matmul_rate.py``: the
best GEMM of the libraries at hand, in FP32 and bf16) and reports efficiency against it. GPUs: datasheet peaks
without sparsity, from
the table below, keyed by the GPU's name: dense FP16 tensor-core peak for TensorRT FP16
engines, FP32 (non-tensor) peak for ONNX Runtime CUDA and torch (TF32 would allow more).

    python bench/flops.py                               small@64, small@128, paper@256
    python bench/flops.py --case paper:256 tiny:32 --peak-gflops 1000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt_number, markdown_table  # noqa: E402

from diffunfold import edm  # noqa: E402

DEFAULT_CASES = ("small:64", "small:128", "paper:256")

# Datasheet peaks, dense (no 2:4 sparsity), TFLOP/s: (pattern on the lowercased GPU name, name,
# FP16 tensor core, FP32 non-tensor). The first pattern that matches wins.
GPU_PEAKS = (
    (r"h100.*pcie", "NVIDIA H100 PCIe", 756.5, 51.2),
    (r"h100.*nvl", "NVIDIA H100 NVL", 835.5, 60.0),
    (r"h100", "NVIDIA H100 SXM", 989.4, 66.9),
    (r"h200.*nvl", "NVIDIA H200 NVL", 835.5, 60.0),
    (r"h200", "NVIDIA H200 SXM", 989.4, 66.9),
    (r"a100", "NVIDIA A100", 312.0, 19.5),
    (r"\bl4\b", "NVIDIA L4", 121.0, 30.3),
    (r"4090", "NVIDIA GeForce RTX 4090", 330.3, 82.6),  # FP16 tensor with FP16 accumulation
    (r"orin", "NVIDIA Jetson AGX Orin 64GB", 42.5, 5.3),
)
COUNTED = "convolutions and matrix products (2 FLOPs per multiply-add); elementwise ops not counted"


@dataclass(frozen=True)
class Peak:
    """A peak rate: ``flops`` FLOP/s in ``precision``, and where the number comes from."""

    device: str
    precision: str
    flops: float
    source: str

    def floor(self, flops: float) -> float:
        """Seconds a perfect use of this hardware would need for ``flops``."""
        return flops / self.flops

    def describe(self) -> str:
        return f"{self.device}: {self.flops / 1e12:.3g} TFLOP/s {self.precision} ({self.source})"


# -- peaks ----------------------------------------------------------------------------------


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _cpuinfo_mhz() -> float | None:
    try:
        match = re.search(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text())
    except OSError:
        return None
    return float(match.group(1)) if match else None


def _amd_core(family: int, model: int) -> str | None:
    """AMD's core generation from the CPUID family and model (AMD's published numbering)."""
    if family == 0x17:
        return "Zen 2" if model >= 0x30 else "Zen / Zen+"
    if family == 0x19:
        return "Zen 4" if 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF else "Zen 3"
    if family == 0x1A:
        return "Zen 5"
    return None


def flops_per_cycle(
    flags: set[str], vendor: str = "", family: int = 0, model: int = 0, name: str = ""
) -> tuple[int, str]:
    """FP32 FLOPs per cycle per core of the detected microarchitecture (FMA = 2 FLOPs), and why.

    AVX-512 does not mean 64: Zen 4 executes it as two 256-bit halves (32, as AVX2 with two FMA
    pipes), Zen 5 at full width on desktop and server parts (64; mobile Zen 5 splits it: 32),
    Intel cores with two 512-bit FMA units 64 (Xeons with one: 32)."""
    core = _amd_core(family, model) if vendor == "AuthenticAMD" else None
    if core in ("Zen / Zen+",):
        return 16, f"{core}: AVX2 as two 128-bit halves, 8 lanes x 2 (FMA)"
    if core == "Zen 5" and "avx512f" in flags:
        if "EPYC" in name or "Ryzen 9" in name or "Ryzen 7 9" in name or "Ryzen 5 9" in name:
            return 64, "Zen 5 (desktop/server): full 512-bit FMA, 16 lanes x 2 (FMA) x 2 pipes"
        return 32, "Zen 5 (not known as desktop/server: mobile parts split AVX-512): 8 lanes x 2 (FMA) x 2 pipes"
    if core in ("Zen 2", "Zen 3", "Zen 4"):
        why = "AVX-512 as two 256-bit halves, " if core == "Zen 4" else ""
        return 32, f"{core}: {why}8 FP32 lanes x 2 (FMA) x 2 FMA pipes"
    if "avx512f" in flags:
        return 64, "avx512f: 16 FP32 lanes x 2 (FMA) x 2 FMA units (one-unit Xeons: half)"
    if "avx2" in flags and "fma" in flags:
        return 32, "avx2+fma: 8 FP32 lanes x 2 (FMA) x 2 FMA units"
    return 8, "no avx2+fma: 8 FP32 FLOPs per cycle assumed"


def _cpu_id(f: dict[str, str]) -> dict:
    """Vendor, family, model and name from lscpu's fields."""

    def num(key):
        try:
            return int(f.get(key, "0"), 0)
        except ValueError:
            return 0

    return {
        "vendor": f.get("Vendor ID", ""),
        "family": num("CPU family"),
        "model": num("Model"),
        "name": f.get("Model name", ""),
    }


def cpu_peak(lscpu: dict[str, str] | None = None, threads: int | None = None) -> Peak:
    """FP32 peak of this CPU: cores x clock x FLOPs per cycle (see the module docstring); with
    ``threads``, of that many cores at most (a run told to use fewer cores)."""
    f = _lscpu() if lscpu is None else lscpu
    try:
        cores = int(f["Core(s) per socket"]) * int(f.get("Socket(s)", "1"))
    except (KeyError, ValueError):
        cores = os.cpu_count() or 1
    try:
        cores = min(cores, len(os.sched_getaffinity(0)))  # the cores this process may use
    except AttributeError:
        pass
    if threads:
        cores = min(cores, int(threads))
    if f.get("CPU max MHz"):
        mhz, clock = float(f["CPU max MHz"]), "max clock from lscpu"
    else:
        mhz = _cpuinfo_mhz() or float(f.get("CPU MHz", 0) or 0) or 2000.0
        clock = "no max clock reported: the current clock from /proc/cpuinfo"
    per_cycle, isa = flops_per_cycle(set(f.get("Flags", "").split()), **_cpu_id(f))
    name = f.get("Model name") or "CPU"
    n = f"{cores} core{'s' if cores != 1 else ''}"
    return Peak(
        f"{name} ({n})",
        "FP32 nominal",
        cores * mhz * 1e6 * per_cycle,
        f"{n} x {mhz:.0f} MHz ({clock}) x {per_cycle} FLOP/cycle ({isa})",
    )


def gpu_peak(name: str, precision: str = "fp16") -> Peak | None:
    """Datasheet peak of the GPU called ``name`` (``fp16``: dense tensor cores; ``fp32``)."""
    low = name.lower()
    for pattern, label, fp16, fp32 in GPU_PEAKS:
        if re.search(pattern, low):
            tflops = fp16 if precision == "fp16" else fp32
            what = "dense FP16 tensor core" if precision == "fp16" else "FP32 non-tensor"
            return Peak(label, precision.upper(), tflops * 1e12, f"datasheet, {what}")
    return None


def peak_for(
    device: str,
    backend: str = "onnxruntime",
    gpu_name: str | None = None,
    override_gflops: float | None = None,
    threads: int | None = None,
) -> Peak | None:
    """The peak a backend's floor is measured against: the CPU's FP32 peak (of ``threads`` cores
    when given); on a GPU, FP16 tensor cores for TensorRT (FP16 engines), FP32 for ONNX Runtime
    and torch. ``override_gflops`` replaces it (``--peak-gflops``). None for a GPU missing from
    the table."""
    if override_gflops:
        return Peak(gpu_name or device, "given", float(override_gflops) * 1e9, "--peak-gflops")
    if not device.startswith("cuda"):
        return cpu_peak(threads=threads)
    if gpu_name is None:
        return None
    return gpu_peak(gpu_name, "fp16" if backend == "tensorrt" else "fp32")


# -- FLOPs ----------------------------------------------------------------------------------

_CACHE: dict[tuple, dict] = {}


def _settings(model):
    """A preset name, a ``ModelSettings`` or a package's settings dict -> ``ModelSettings``."""
    from diffunfold.training.model import ModelSettings

    if isinstance(model, str):
        from diffunfold.training.config import load_config

        return load_config(model).model
    if isinstance(model, dict):
        return ModelSettings.from_dict(model)
    return model


def regularizer_flops(model, size: int | tuple[int, int], batch: int = 1) -> dict:
    """FLOPs of one regulariser call ``R_0(x; sigma)`` on a ``(batch, C, H, W)`` input, for a
    preset name, ``ModelSettings`` or settings dict: ``{"flops", "by_op", "parameters",
    "regularizer_parameters", "stages", "shared"}`` (every stage's network has the same cost)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from diffunfold.training.model import DiffUnfolding

    settings = _settings(model)
    h, w = (size, size) if isinstance(size, int) else size
    key = (json.dumps(settings.to_dict(), sort_keys=True), h, w, batch)
    if key not in _CACHE:
        with torch.device("meta"):
            net = DiffUnfolding(settings).eval()
            x = torch.zeros(batch, settings.space.model_channels, h, w)
            sigma = torch.ones(batch)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net.regularize(x, sigma, 0)
        counts = net.parameter_counts()
        _CACHE[key] = {
            "flops": int(counter.get_total_flops()),
            "by_op": {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()},
            "parameters": int(counts["total"]),
            "regularizer_parameters": int(counts["regularizers"]) // len(net.regularizers),
            "stages": int(settings.stages),
            "shared": bool(settings.shared),
        }
    return dict(_CACHE[key])


def solve_flops(call_flops: float, stages: int, steps: int = 18, sampler: str = "euler") -> float:
    """FLOPs of one image's solve: K regulariser calls per denoiser call x NFE denoiser calls."""
    return float(call_flops) * stages * edm.nfe_of(steps, sampler)


def case_rows(cases, steps: int = 18, sampler: str = "euler", peak: Peak | None = None) -> list[dict]:
    """One row per ``preset:size`` case: FLOPs per call, per denoiser call, per solve, and the
    floors on ``peak`` (default: this CPU)."""
    peak = peak or cpu_peak()
    nfe = edm.nfe_of(steps, sampler)
    rows = []
    for case in cases:
        preset, _, size = str(case).partition(":")
        f = regularizer_flops(preset, int(size or 64))
        per_solve = solve_flops(f["flops"], f["stages"], steps, sampler)
        rows.append(
            {
                "preset": preset,
                "size": int(size or 64),
                "parameters_M": f["parameters"] / 1e6,
                "K": f["stages"],
                "shared": f["shared"],
                "gflop_per_call": f["flops"] / 1e9,
                "gflop_per_denoiser_call": f["flops"] * f["stages"] / 1e9,
                "nfe": nfe,
                "gflop_per_solve": per_solve / 1e9,
                "floor_ms_per_call": 1e3 * peak.floor(f["flops"]),
                "floor_s_per_solve": peak.floor(per_solve),
                "by_op": f["by_op"],
            }
        )
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--case",
        nargs="+",
        default=list(DEFAULT_CASES),
        metavar="PRESET:SIZE",
        help=f"presets and image sizes (default {' '.join(DEFAULT_CASES)})",
    )
    ap.add_argument("--steps", type=int, default=18, help="sampler steps of a solve (default 18)")
    ap.add_argument("--sampler", default="euler", choices=["euler", "heun"])
    ap.add_argument("--peak-gflops", type=float, help="use this peak (GFLOP/s) instead of the CPU's")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    return ap.parse_args(argv)


def case_table(rows: list[dict]) -> str:
    """The per-case FLOPs and floors on this machine's peak, as a Markdown table."""
    cols = [
        "preset",
        "size",
        "parameters_M",
        "K",
        "gflop_per_call",
        "gflop_per_denoiser_call",
        "gflop_per_solve",
        "floor_ms_per_call",
        "floor_s_per_solve",
    ]
    heads = [
        "preset",
        "size",
        "params (M)",
        "K",
        "GFLOP / call",
        "GFLOP / denoiser call",
        "GFLOP / solve",
        "floor / call (ms, here)",
        "floor / solve (s, here)",
    ]
    return markdown_table(rows, cols, heads, fmt=fmt_number)


def gpu_floor_rows(rows: list[dict]) -> list[dict]:
    """Per GPU of ``GPU_PEAKS``: each case's floor per solve (ms per image) at the dense FP16 peak."""
    gpu_rows = []
    for _, label, fp16, fp32 in GPU_PEAKS:
        row = {"gpu": label, "fp16_tflops": fp16, "fp32_tflops": fp32}
        for r in rows:
            row[f"{r['preset']}@{r['size']}"] = 1e3 * r["gflop_per_solve"] * 1e9 / (fp16 * 1e12)
        gpu_rows.append(row)
    return gpu_rows


def main(argv=None) -> int:
    args = parse_args(argv)
    peak = peak_for("cpu", override_gflops=args.peak_gflops)
    rows = case_rows(args.case, args.steps, args.sampler, peak)
    print(f"FLOPs counted: {COUNTED}.")
    print(f"Peak here: {peak.describe()}")
    print(
        f"Solve: K regulariser calls x {rows[0]['nfe'] if rows else '?'} denoiser calls ({args.steps} "
        f"{args.sampler} steps), per image.\n"
    )
    print(case_table(rows))
    gpu_rows = gpu_floor_rows(rows)
    print("\nFloor per solve (ms per image) on GPUs at their dense FP16 tensor-core peak (datasheet):\n")
    print(markdown_table(gpu_rows, fmt=fmt_number))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"counted": COUNTED, "peak": asdict(peak), "cases": rows, "gpu_floors_ms_per_solve_fp16": gpu_rows},
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
