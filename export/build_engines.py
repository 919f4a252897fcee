#!/usr/bin/env python
"""Build TensorRT engines of a model package for one GPU target, on that GPU.

    python export/build_engines.py PACKAGE --target h100
    python export/build_engines.py --list

The same as `diffunfold build-engines` (diffunfold.engines.build_engines); needs the trt extra
(`pip install 'diffunfold[trt]'`) and the target's GPU. See engines/README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import diffunfold  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))

from diffunfold.engines import add_build_engines_arguments, run_build_engines  # noqa: E402
from diffunfold.errors import DiffUnfoldError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_engines.py")
    add_build_engines_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_build_engines(args)
    except DiffUnfoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
