"""What machine this is, in words: for the tables the demo and the benchmarks write."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo's "model name"), else what platform knows."""
    try:
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's ISA flags (/proc/cpuinfo's "flags": ``avx512f``, ``avx512_bf16``, ``amx_bf16``,
    ...); empty where they cannot be read."""
    try:
        match = re.search(r"^flags\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        return set()
    return set(match.group(1).split()) if match else set()


def has_native_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes in bfloat16 natively (AVX-512 BF16 or AMX), where bf16 inference
    pays; elsewhere it is emulated and slower than float32."""
    f = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & f)


def describe_cpu() -> str:
    """``"AMD EPYC, 2 cores"``."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


__all__ = ["cpu_flags", "cpu_model", "describe_cpu", "has_native_bf16"]
