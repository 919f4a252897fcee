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


def describe_cpu() -> str:
    """``"AMD EPYC, 2 cores"``."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


__all__ = ["cpu_model", "describe_cpu"]
