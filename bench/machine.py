"""What every benchmark records next to its numbers: the machine, the versions, the settings."""

from __future__ import annotations

import json
import os
import platform
import re
import socket
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"model name\s*:\s*(.+)", text)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import numpy

    info = {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def machine_slug(info: dict) -> str:
    """A file name for the machine: GPU name if any, else CPU model and core count."""
    base = info.get("gpu") or f"{info['cpu']}-{info['cores']}cores"
    return re.sub(r"[^A-Za-z0-9]+", "-", base).strip("-").lower()


def write_results(name: str, info: dict, settings: dict, rows, markdown: str) -> Path:
    """Write bench/results/<name>-<machine>.md and .json; returns the Markdown path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{name}-{machine_slug(info)}"
    payload = {"benchmark": name, "machine": info, "settings": settings, "results": rows}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    header = "\n".join(f"- {k}: {v}" for k, v in info.items())
    settings_md = "\n".join(f"- {k}: {v}" for k, v in settings.items())
    stem.with_suffix(".md").write_text(f"# {name}\n\nMachine:\n{header}\n\nSettings:\n{settings_md}\n\n{markdown}\n")
    return stem.with_suffix(".md")
