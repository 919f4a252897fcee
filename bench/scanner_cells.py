"""What the scanner experiments (``bench/experiments/scanner_*.py``) share: their command line
(the package, the validation volumes, slice size and count, cells ``MASK:NOISE[:MAPS]``), the
scans of a cell, and one JSON line per row on stdout."""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from scanner import scan

from diffunfold.data.mri_slices import VolumeSlices
from diffunfold.runtime.solver import Solver

ROOT = Path(__file__).resolve().parents[1]


def validation_parser(doc: str, size: int, slices: int, cells: list[str]) -> argparse.ArgumentParser:
    """The shared options; an experiment adds its own before parsing."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", default=str(ROOT / "samples" / "models" / "mri-small"))
    ap.add_argument("--volumes", default=str(ROOT / "data" / "mri" / "train"), help="validation volumes")
    ap.add_argument("--size", type=int, default=size)
    ap.add_argument("--slices", type=int, default=slices)
    ap.add_argument("--cells", nargs="+", default=cells, help="MASK:NOISE[:MAPS] (maps: espirit, the default, or true)")
    return ap


def cell_scans(items: list[dict], cell: str) -> Iterator[tuple[int, dict, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Per slice of a cell: its index, the slice, its k-space and mask (1-D masks at 4x, 2-D at
    8x, the index as the noise seed) and the coil maps to give (the true ones, or None for
    ESPIRiT)."""
    kind, level, *maps = cell.split(":")
    acc = 4.0 if kind.endswith("1d") else 8.0
    for i, item in enumerate(items):
        y, mask = scan(item, kind, acc, float(level), i)
        yield i, item, y, mask, item["coil_maps"] if maps == ["true"] else None


def run_cells(args, rows: Callable[[Solver, list[dict], str], Iterator[dict]], digits: int = 3) -> int:
    """Every cell's rows, one JSON line each (floats rounded to ``digits``)."""
    warnings.simplefilter("ignore")  # numba's notes from SigPy
    solver = Solver.load(args.package)
    items = VolumeSlices(args.volumes, size=args.size).fixed(args.slices)
    for cell in args.cells:
        for row in rows(solver, items, cell):
            print(json.dumps({k: round(v, digits) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return 0
