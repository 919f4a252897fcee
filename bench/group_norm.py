"""Group norms as exported (Reshape-InstanceNormalization-Reshape) against the reshape-free form
from per-channel statistics (``diffunfold.group_norm_graph``): one regulariser call of a package,
on OpenVINO (bf16 and f32, the backend's ``group_norm`` option) and on ONNX Runtime (a session on
each graph), at several sizes.

Everything runs in one process, interleaved: each round calls every (backend, form) ``--calls``
times, and the median over ``--rounds`` rounds is kept, so a drift of the machine touches all
alike. Each form is also checked against ONNX Runtime on the exported graph in float32 (the
reference, itself torch to 1e-4 at export): ``max|form - reference| / max|reference|``.

    python bench/group_norm.py                                    # the bundled image-small, 64 128 256 px
    python bench/group_norm.py --package samples/models/mri-small --size 64 --no-write
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt_number, markdown_table  # noqa: E402
from machine import LoadWatch, add_output_arguments, machine_info, record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FORMS = ("exported", "reduce")


def callers(pkg_path: Path, threads: int | None) -> dict[tuple[str, str], object]:
    """``{(backend, form): call(x, sigma) -> output}`` for every backend and group-norm form."""
    import onnx
    import onnxruntime as ort

    from diffunfold.group_norm_graph import reduce_form
    from diffunfold.package import ModelPackage
    from diffunfold.runtime.backend_openvino import OpenVinoBackend

    pkg = ModelPackage.open(pkg_path)
    out = {}
    for precision in ("bf16", "f32"):
        for form in FORMS:
            be = OpenVinoBackend(pkg, precision=precision, threads=threads, group_norm=form)
            out[(f"openvino {precision}", form)] = lambda x, s, be=be: be.regularize(x, s, 0)
    exported = onnx.load(str(pkg.file(pkg.regularizer_files[0])))
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the rewrite leaves the exported reshape constants unused: a warning each
    if threads:
        so.intra_op_num_threads = threads
    for form, model in (("exported", exported), ("reduce", reduce_form(exported))):
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        out[("onnxruntime", form)] = lambda x, s, sess=sess, names=names: sess.run(None, feeds(x, s, names))[0]
    return out


def feeds(x: np.ndarray, sigma: float, names: set[str]) -> dict:
    b = x.shape[0]
    f = {"x": x, "sigma": np.full(b, sigma, np.float32)}
    if "stage" in names:
        f["stage"] = np.zeros(b, np.int64)
    return f


def run_size(calls: dict, channels: int, size: int, rounds: int, per_round: int) -> list[dict]:
    x = (0.5 * np.random.default_rng(0).standard_normal((1, channels, size, size))).astype(np.float32)
    ref = calls[("onnxruntime", "exported")](x, 1.0)
    diff = {}
    for key, call in calls.items():
        out = call(x, 1.0)  # warm-up: the compile, allocations
        diff[key] = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref))) if np.all(np.isfinite(out)) else float("nan")
    times = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                call(x, 1.0)
            times[key].append((time.perf_counter() - t0) / per_round)
    rows = []
    for (backend, form), ts in times.items():
        ms = 1e3 * statistics.median(ts)
        base = 1e3 * statistics.median(times[(backend, "exported")])
        rows.append(
            {
                "size": size,
                "backend": backend,
                "group_norm": form,
                "ms_per_call": ms,
                "vs_exported": ms / base,
                "max_rel_diff": diff[(backend, form)],
            }
        )
        print(" ".join(f"{k}={fmt_number(v) if isinstance(v, float) else v}" for k, v in rows[-1].items()), flush=True)
    return rows


def to_markdown(rows: list[dict], args) -> str:
    cols = ["size", "backend", "group_norm", "ms_per_call", "vs_exported", "max_rel_diff"]
    heads = ["px", "backend", "group norms", "ms / call", "/ exported form", "max rel diff vs ORT f32 exported"]
    shown = [{c: fmt_number(r.get(c)) for c in cols} for r in rows]
    return (
        f"One regulariser call of `{args.package}` at batch 1, in one process: {args.rounds} interleaved rounds "
        f"of {args.calls} calls per (backend, form), the median round kept. `exported`: Reshape-"
        "InstanceNormalization-Reshape as torch exports it; `reduce`: from per-channel statistics "
        "(`diffunfold.group_norm_graph`). The max rel diff is against ONNX Runtime in float32 on the exported "
        "graph (bf16 rows: the bf16 rounding, ~1e-2).\n\n" + markdown_table(shown, cols, heads, fmt=str)
    )


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench/group_norm.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--package", default=str(ROOT / "samples" / "models" / "image-small"))
    ap.add_argument("--size", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=10, help="calls per round (default 10)")
    ap.add_argument("--threads", type=int, default=None)
    add_output_arguments(ap)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from diffunfold.package import ModelPackage

    watch, info = LoadWatch(), machine_info()
    calls = callers(args.package, args.threads)
    channels = ModelPackage.open(args.package).space.model_channels
    rows = [r for size in args.size for r in run_size(calls, channels, size, args.rounds, args.calls)]
    record("group_norm", watch, info, args, rows, to_markdown(rows, args), "Group norms: exported against reduce form")
    return 0


if __name__ == "__main__":
    sys.exit(main())
