"""bench/run.py's report: the Markdown tables of the solves and the regulariser calls, and the
note on the floor rate, from the result ``run.run`` returns."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import matmul_rate  # noqa: E402
from common import fmt_number, markdown_table  # noqa: E402


def cell(v, col: str = "") -> str:
    """Table cells: efficiencies as percentages, other numbers to 3 significant digits."""
    if "efficiency" in col and isinstance(v, float):
        return fmt_number(100 * v) + " %"
    return fmt_number(v)


def table(rows: list[dict], cols: list[str], heads: list[str]) -> str:
    shown = [{c: cell(r.get(c), c) for c in cols} for r in rows]
    return markdown_table(shown, cols, heads, fmt=str)


def to_markdown(res: dict) -> str:
    status = [
        {"backend": n, "status": "timed: " + s if s.startswith("ok") else "skipped: " + s}
        for n, s in res["status"].items()
    ]
    status.append({"backend": "torch reference sampler", "status": res["reference"]})
    parts = ["Backends:", markdown_table(status)]
    s = res["settings"]
    parts += [
        f"End-to-end solve: {s['steps']} Euler steps ({s['nfe']} denoiser calls x K = {s['K']} regulariser calls), "
        f"task {s['task']}. Seconds per image (batch 1: latency; larger: throughput); network / physics / sampler "
        "split the solver's time; vs ORT = s/image over ONNX Runtime's (spinning off: the runtime's path before "
        "OpenVINO) in the same case (< 1: faster); peak MB = the process's peak resident memory, + MB = above "
        "what it held before the case; ratio = torch reference / backend (> 1: faster than the reference); max rel "
        "diff: largest |backend - reference| over the reference's largest value; network floor = FLOPs of the "
        "K x NFE regulariser calls over the floor rate (below), efficiency = floor / network time. regulariser: "
        "how the runtime ran R_k (`--tile`; by default in tiles above twice the training size); the reference "
        "always runs it whole, so where the runtime tiles, max rel diff measures the tiling, not the backend, and the "
        "floor (whole-image FLOPs) understates the tiled work. Every backend runs each case in interleaved "
        f"rounds (one solve each per round, {s['repeats']} rounds after a warm-up solve each), the median run kept."
        + (
            f" vs base pkg = s/image over ONNX Runtime's (spinning off) on `{s['baseline_package']}`, timed in the "
            "same rounds: the runtime before this model and the OpenVINO backend."
            if s.get("baseline_package")
            else ""
        ),
        solve_table(res["solves"], bool(s.get("baseline_package"))),
        "One regulariser call R_k(x; sigma), batch 1 (U-Net with the EDM preconditioning), median of "
        f"{s['call_repeats']}; floor = its FLOPs ({s['flops']}) over the peak; efficiency = floor / measured.",
        table(
            res["calls"],
            [
                "size",
                "backend",
                "ms_per_call",
                "gflop_per_call",
                "floor_ms",
                "efficiency",
                "peak_tflops",
                "peak_precision",
            ],
            ["size", "backend", "ms / call", "GFLOP / call", "floor ms", "efficiency", "peak TFLOP/s", "precision"],
        ),
        floor_note(s),
    ]
    return "\n\n".join(parts)


def solve_table(rows: list[dict], with_base_pkg: bool) -> str:
    cols = [
        "size",
        "batch",
        "mode",
        "backend",
        "tiling",
        "s_per_image",
        "vs_ort",
        "images_per_s",
        "network_s",
        "physics_s",
        "sampler_s",
        "peak_mb",
        "peak_above_mb",
        "floor_network_s",
        "network_efficiency",
        "reference_s_per_image",
        "ratio",
        "max_rel_diff",
    ]
    heads = [
        "size",
        "batch",
        "mode",
        "backend",
        "regulariser",
        "s/image",
        "vs ORT",
        "images/s",
        "network",
        "physics",
        "sampler",
        "peak MB",
        "+ MB",
        "network floor",
        "efficiency",
        "torch reference s/image",
        "ratio",
        "max rel diff",
    ]
    if with_base_pkg:
        cols.insert(7, "vs_base_pkg")
        heads.insert(7, "vs base pkg")
    return table(rows, cols, heads)


def floor_note(s: dict) -> str:
    mm = s.get("matmul")
    if not mm:
        return "Peaks: " + "; ".join(f"{n}: {p}" for n, p in s["peaks"].items()) + "."
    rates = "; ".join(f"{p}: {matmul_rate.describe(m)}" for p, m in mm["rates"].items())
    return (
        f"Floor rate: the best matrix multiply this machine achieved in this run, per precision, over "
        f"the libraries at hand ({rates}). bf16 rows are held to the bf16 rate, the rest to FP32's. "
        f"For comparison only, never as 'perfect': the nominal peak, {mm['nominal']}."
    )
