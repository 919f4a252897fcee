"""ONNX Runtime against TensorRT (FP16) on a package's regulariser, through Polygraphy.

For each regulariser ONNX of a package (``regularizer.onnx`` with inputs ``x, sigma, stage``
for a shared network, else ``regularizer_<k>.onnx`` with ``x, sigma``), Polygraphy's
``Comparator`` runs the same inputs through

* ONNX Runtime (Polygraphy's ``OnnxrtRunner`` on a session with the runtime's options; the
  CUDA provider where onnxruntime-gpu and a GPU are present, else the CPU), FP32: the
  reference; and
* where TensorRT imports and a GPU is visible, the package's FP16 TensorRT engine
  (``polygraphy.backend.trt``): the package's own engines for this GPU, those in
  ``--engines``, or engines built now with ``diffunfold.engines.build_engines`` (the
  project's FP16 build: normalisation, softmax/attention and the EDM preconditioning pinned to
  FP32) for ``--target`` or the GPU's shipped target,

and compares the outputs with ``CompareFunc.simple(atol, rtol)``: an element passes when
``|trt - ort| <= atol + rtol * |ort|`` (Polygraphy's rule). Defaults ``atol = rtol = 2e-2``:
FP16 keeps about 3 decimal digits per operation, and the regulariser's output is in model
space (images in about [-1, 1]). Also reported: the largest absolute difference relative to
the largest |output| of ONNX Runtime, and the median time of one call per runner (Polygraphy's
own inference timing, ``--iterations`` calls after a warm-up; on a GPU it includes copying the
numpy inputs and outputs between host and device, which ``bench/run.py``'s call timing does not).

Without TensorRT (or without a GPU) it runs ONNX Runtime alone through Polygraphy, says why
TensorRT was absent, and checks that the outputs are finite.

Inputs, seeded: ``x`` in model space, ``N(0, 0.5^2) + sigma N(0, 1)`` (a noisy image at noise
level sigma), ``sigma`` in EDM's range [0.002, 80] (the first input at 80, the second at
0.002, the rest log-uniform), ``stage`` integers in [0, K).

    python bench/polygraphy_compare.py models/small --size 64 --batch 1
    python bench/polygraphy_compare.py --preset paper --size 256 --batch 1 8   # random weights
    python bench/polygraphy_compare.py models/small --engines models/small/engines/h100 --json out.json

The same check from Polygraphy's command line (its FP16 build pins nothing to FP32, unlike the
project's, so expect larger differences there):

    polygraphy run PKG/regularizer.onnx --onnxrt --trt --fp16 \\
        --input-shapes x:[1,3,64,64] sigma:[1] stage:[1] \\
        --val-range x:[-2,2] sigma:[0.002,80] stage:[0,3] --atol 2e-2 --rtol 2e-2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt_number, markdown_table, prepare_engines, random_package, tensorrt_version  # noqa: E402
from machine import machine_info, write_results  # noqa: E402

from diffunfold import edm  # noqa: E402
from diffunfold.errors import InputError  # noqa: E402
from diffunfold.package import ModelPackage  # noqa: E402


def say(msg: str) -> None:
    print(msg, flush=True)


def feeds_for(pkg: ModelPackage, batch: int, size: int, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` seeded feed dicts for a regulariser: x, sigma (and stage for a shared network)."""
    rng = np.random.default_rng(seed)
    c = int(pkg.manifest["data"]["model_channels"])
    m = pkg.size_multiple
    hw = m * -(-size // m)
    feeds = []
    for i in range(count):
        sigma = np.exp(rng.uniform(np.log(edm.SIGMA_MIN), np.log(edm.SIGMA_MAX), batch))
        if i == 0:
            sigma[:] = edm.SIGMA_MAX
        elif i == 1:
            sigma[:] = edm.SIGMA_MIN
        x = 0.5 * rng.standard_normal((batch, c, hw, hw)) + sigma[:, None, None, None] * rng.standard_normal(
            (batch, c, hw, hw)
        )
        feed = {"x": x.astype(np.float32), "sigma": sigma.astype(np.float32)}
        if pkg.shared:
            feed["stage"] = rng.integers(0, pkg.stages, batch).astype(np.int64)
        feeds.append(feed)
    return feeds


def tensorrt_engines(pkg: ModelPackage, args, tmp: Path) -> tuple[dict[str, tuple[Path, object]] | None, str]:
    """``({onnx name: (engine path, record)}, status)`` of FP16 engines for the GPU here, or None
    and why TensorRT is not used."""
    version = tensorrt_version()
    if version is None:
        return None, "TensorRT is not installed here (pip install 'diffunfold[trt,gpu]' on a GPU machine)"
    from diffunfold.engines import cupy_gpu
    from diffunfold.runtime.backend_tensorrt import find_engines

    try:
        gpu = cupy_gpu(args.gpu)
    except InputError as exc:
        return None, str(exc)
    if gpu is None:
        return None, "TensorRT is installed but CuPy sees no CUDA device (install 'diffunfold[gpu]')"
    folder = Path(args.engines) if args.engines else None
    if folder is None:
        folder, status = prepare_engines(pkg, args.gpu, tmp, args.target, log=say)
        if not status.startswith("ok"):
            return None, status
    try:
        target, found = find_engines(pkg, gpu, version, engines=folder)
    except InputError as exc:
        return None, str(exc)
    engines = dict(zip(pkg.regularizer_files, found, strict=True))
    return engines, f"TensorRT {version}, target {target}, {found[0][1].precision} engines on {gpu}"


def onnxrt_session(path: str, gpu: bool, device: int = 0):
    """A loader of the ONNX Runtime session with the runtime's own options (all graph
    optimisations, worker threads that do not spin): the CUDA provider when ``gpu`` and
    onnxruntime-gpu is installed, else the CPU."""
    import onnxruntime as ort

    def load():
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))
        return ort.InferenceSession(path, opts, providers=providers)

    return load


def median_runtime(runner, feed: dict, iterations: int) -> float:
    """Median seconds of one ``runner.infer`` (Polygraphy's own timing) after a warm-up call."""
    times = []
    with runner:
        runner.infer(feed)
        for _ in range(max(1, iterations)):
            runner.infer(feed)
            times.append(runner.last_inference_time())
    return statistics.median(times)


def tensorrt_runner(engine: tuple, feeds: list[dict]):
    """A Polygraphy runner of the TensorRT engine ``(engine path, record)``, on the optimisation
    profile that covers the feeds' shape."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from diffunfold.engines import choose_profile

    engine_path, record = engine
    b, _, h, w = feeds[0]["x"].shape
    profile = choose_profile(record.profile_ranges(), b, h, w)

    class CastingTrtRunner(TrtRunner):
        """Feeds cast to the engine's input types (an engine may take ``stage`` as int32)."""

        def infer(self, feed_dict, *a, **kw):
            meta = self.get_input_metadata()
            feed = {
                n: (
                    v.astype(np.int32)
                    if n in meta and "int32" in str(meta[n].dtype).lower() and v.dtype == np.int64
                    else v
                )
                for n, v in feed_dict.items()
            }
            return super().infer(feed, *a, **kw)

    return CastingTrtRunner(
        EngineFromBytes(BytesFromPath(str(engine_path))), name="trt-fp16", optimization_profile=profile
    )


def accuracy_row(results, onnx_name: str, feeds: list[dict], args) -> dict:
    """The row of one file: ONNX Runtime's outputs checked, and TensorRT's against them where it ran."""
    from polygraphy.comparator import Comparator, CompareFunc

    outs = {name: [np.asarray(it["r"], dtype=np.float32) for it in iters] for name, iters in results}
    names = [name for name, _ in results]
    ref = outs[names[0]]
    row = {
        "file": onnx_name,
        "batch": int(feeds[0]["x"].shape[0]),
        "size": int(feeds[0]["x"].shape[-1]),
        "inputs": len(feeds),
        "onnxrt_finite": all(bool(np.isfinite(o).all()) for o in ref),
        "onnxrt_max_abs_output": max(float(np.abs(o).max()) for o in ref),
    }
    if len(names) == 2:
        trt = outs[names[1]]
        accuracy = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=args.atol, rtol=args.rtol))
        pairs = list(zip(trt, ref, strict=True))
        row.update(
            trt_finite=all(bool(np.isfinite(o).all()) for o in trt),
            max_abs_diff=max(float(np.abs(a - r).max()) for a, r in pairs),
            max_rel_diff=max(float(np.abs(a - r).max() / max(np.abs(r).max(), 1e-12)) for a, r in pairs),
            passed=bool(accuracy),
        )
    return row


def compare_file(pkg: ModelPackage, onnx_name: str, feeds: list[dict], engine, args) -> dict:
    """Run one regulariser through ONNX Runtime (and TensorRT), compare, time. One result row."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator

    path = str(pkg.file(onnx_name))
    runners = [OnnxrtRunner(onnxrt_session(path, engine is not None, args.gpu), name="onnxrt")]
    if engine is not None:
        runners.append(tensorrt_runner(engine, feeds))
    results = Comparator.run(runners, data_loader=feeds)
    row = accuracy_row(results, onnx_name, feeds, args)
    row["onnxrt_ms"] = 1e3 * median_runtime(runners[0], feeds[0], args.iterations)
    if len(runners) == 2:
        row["trt_fp16_ms"] = 1e3 * median_runtime(runners[1], feeds[0], args.iterations)
        row["speedup_trt_over_onnxrt"] = row["onnxrt_ms"] / row["trt_fp16_ms"]
    return row


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench/polygraphy_compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("package", nargs="?", help="a model package (default: --preset with random weights)")
    ap.add_argument(
        "--preset", default="small", help="preset exported with random weights when no package is given (default small)"
    )
    ap.add_argument("--size", type=int, nargs="+", default=[64], help="image sizes (default 64)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    ap.add_argument("--stage", type=int, help="separate networks: compare only regularizer_<stage>.onnx")
    ap.add_argument("--inputs", type=int, default=3, help="different inputs compared per case (default 3)")
    ap.add_argument("--iterations", type=int, default=10, help="timed calls per runner (default 10)")
    ap.add_argument("--atol", type=float, default=2e-2, help="absolute tolerance (default 2e-2)")
    ap.add_argument("--rtol", type=float, default=2e-2, help="relative tolerance (default 2e-2)")
    ap.add_argument("--engines", help="a folder of engines for this GPU (default: the package's, else built now)")
    ap.add_argument("--target", help="engine target to build when there are none (default: the GPU's)")
    ap.add_argument("--gpu", type=int, default=0, help="CUDA device index (default 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", help="write the rows and settings as JSON")
    ap.add_argument("--out", help="also write polygraphy-<machine>.md/.json into this folder (e.g. bench/results)")
    ap.add_argument("--verbose", action="store_true", help="Polygraphy's own log at INFO level")
    return ap.parse_args(argv)


def open_package(args, tmp: str) -> ModelPackage:
    """The package asked for, or the ``--preset``'s random weights exported into ``tmp``."""
    if args.package:
        pkg = ModelPackage.open(args.package)
    else:
        say(f"exporting random weights of the {args.preset} preset ...")
        pkg = random_package(args.preset, tmp)
    return pkg


def compare_all(pkg: ModelPackage, engines, args) -> list[dict]:
    """One row per regulariser file, size and batch (only ``--stage``'s file for separate networks)."""
    files = pkg.regularizer_files
    if args.stage is not None and not pkg.shared:
        files = [files[args.stage]]
    rows = []
    for size in args.size:
        for batch in args.batch:
            feeds = feeds_for(pkg, batch, size, args.inputs, args.seed)
            for name in files:
                row = compare_file(pkg, name, feeds, engines[name] if engines else None, args)
                rows.append(row)
                say(", ".join(f"{k} {fmt_number(v) if isinstance(v, float) else v}" for k, v in row.items()))
    return rows


def run_settings(args, trt_status: str, engines, polygraphy_version: str) -> dict:
    """What was compared and how, as written with the rows."""
    return {
        "package": args.package or f"{args.preset} preset, random weights",
        "tensorrt": trt_status,
        "compared": "onnxrt vs trt-fp16" if engines else "onnxrt alone",
        "atol": args.atol,
        "rtol": args.rtol,
        "rule": "|trt - ort| <= atol + rtol |ort| per element (CompareFunc.simple)",
        "inputs_per_case": args.inputs,
        "iterations": args.iterations,
        "seed": args.seed,
        "polygraphy": polygraphy_version,
        "data": "x ~ N(0, 0.5^2) + sigma N(0, 1); sigma in [0.002, 80] (80, 0.002, then log-uniform); stage in [0, K)",
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import polygraphy
        from polygraphy.logger import G_LOGGER
    except ImportError:
        say("polygraphy is not installed: pip install polygraphy (in the dev and trt extras)")
        return 2
    G_LOGGER.module_severity = G_LOGGER.INFO if args.verbose else G_LOGGER.WARNING

    with tempfile.TemporaryDirectory(prefix="diffunfold-polygraphy-") as tmp:
        pkg = open_package(args, tmp)
        engines, trt_status = tensorrt_engines(pkg, args, Path(tmp))
        say(
            ("comparing ONNX Runtime (FP32) with TensorRT: " if engines else "ONNX Runtime alone (TensorRT absent: ")
            + trt_status
            + ("" if engines else ")")
        )
        rows = compare_all(pkg, engines, args)

    ok = all(r["onnxrt_finite"] for r in rows) and all(
        r.get("passed", True) and r.get("trt_finite", True) for r in rows
    )
    settings = run_settings(args, trt_status, engines, polygraphy.__version__)
    md = markdown_table(rows, fmt=fmt_number)
    print()
    print(md)
    print(f"\n{'PASSED' if ok else 'FAILED'}: {settings['compared']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings, "passed": ok, "rows": rows}, indent=2) + "\n")
    if args.out:
        path = write_results("polygraphy", machine_info(), settings, rows, md, out_dir=args.out)
        print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
