"""Building TensorRT engines of a model package for a GPU target (``diffunfold build-engines``),
with the layers that must stay FP32 in a reduced-precision build.

The FP32 layer policy (a pure function, tested without a GPU) lives in
:mod:`diffunfold.engine_fp32`; targets, GPUs and engine records (what an engine was built for,
and the check before loading one) in :mod:`diffunfold.engine_targets`; their names are
re-exported here, so
``diffunfold.engines`` is the one import for all of them. TensorRT is imported only inside the
functions that build, via ``require("tensorrt", "trt")``. This module never imports torch.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import cli_values as V
from .engine_fp32 import ONNX_TO_TRT_LAYER, attention_scopes, fp32_layer_policy, preview_fp32_layers
from .engine_targets import (
    ENGINES_ROOT,
    HARDWARE_COMPATIBILITY,
    PRECISIONS,
    RECORD_FORMAT,
    TARGETS_DIR,
    DimRange,
    EngineRecord,
    EngineTarget,
    GPUInfo,
    Profile,
    cc_tuple,
    check_gpu_for_target,
    check_record,
    choose_profile,
    cupy_gpu,
    current_gpu,
    engine_paths,
    list_targets,
    load_target,
    parse_target,
    rebuild_hint,
)
from .errors import InputError, require
from .package import ModelPackage, sha256_file, write_json_atomic

# -- building (needs TensorRT and the GPU) ----------------------------------------------------


def default_timing_cache(target: EngineTarget) -> Path:
    """``<repo>/engines/built/<target>.timing.cache`` in a checkout (git-ignored), else
    ``~/.cache/diffunfold/engines/``."""
    base = ENGINES_ROOT / "built" if TARGETS_DIR.is_dir() else Path.home() / ".cache" / "diffunfold" / "engines"
    return base / f"{target.name}.timing.cache"


def _write_bytes_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _trt_logger(trt, verbose: bool):
    return trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)


def _parse_onnx(trt, builder, logger, onnx_path: Path):
    network = builder.create_network(0)  # TensorRT 10: every network is explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(_tensorrt_onnx(onnx_path), str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            node = getattr(e, "node_name", lambda: "")() or f"node {e.node()}"
            op = getattr(e, "node_operator", lambda: "")()
            errors.append(f"  {node}{f' ({op})' if op else ''}: {e.desc()}")
        raise InputError(
            f"TensorRT's ONNX parser cannot read {onnx_path} ({parser.num_errors} error(s)):\n"
            + "\n".join(errors)
            + "\nexport the package again with this diffunfold, or report it"
        )
    return network, parser


def _tensorrt_onnx(onnx_path: Path) -> bytes:
    """The graph's bytes as TensorRT's parser can read them: fused attention nodes (which it
    does not read, ``attention_graph.py``) spelled out as MatMul-Softmax-MatMul, which it fuses
    itself; a graph without them as it is."""
    data = onnx_path.read_bytes()
    if b"MultiHeadAttention" not in data:
        return data
    onnx = require("onnx", "export")
    from .attention_graph import spell_out

    return spell_out(onnx.load_from_string(data)).SerializeToString()


def _is_float(trt, tensor) -> bool:
    return tensor is not None and tensor.dtype in (trt.float32, trt.float16, getattr(trt, "bfloat16", trt.float16))


def _pin_fp32(trt, network) -> list[str]:
    """Apply :func:`fp32_layer_policy` to every layer of ``network``; return the pinned names."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    scopes = attention_scopes((layer.type.name, layer.name) for layer in layers)
    pinned = []
    for layer in layers:
        if not fp32_layer_policy(layer.type.name, layer.name, scopes):
            continue
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not all(_is_float(trt, t) for t in outs) or not any(_is_float(trt, t) for t in ins if t is not None):
            continue  # shape arithmetic on integers: nothing to pin
        if layer.type == trt.LayerType.NORMALIZATION:
            layer.__class__ = trt.INormalizationLayer  # the python binding hands out ILayer
            if hasattr(layer, "compute_precision"):
                layer.compute_precision = trt.float32  # the variance is accumulated in FP32
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned


def _builder_config(trt, builder, target: EngineTarget):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_bytes)
    if target.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif target.precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    if target.precision != "fp32":
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)  # the pinned layers really stay FP32
    if target.hardware_compatibility != "none":
        level = {"ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}
        value = getattr(trt.HardwareCompatibilityLevel, level[target.hardware_compatibility], None)
        if value is None:
            raise InputError(
                f"TensorRT {trt.__version__} has no hardware compatibility level "
                f"{level[target.hardware_compatibility]}; use a newer TensorRT 10 or set "
                "hardware_compatibility = 'none'"
            )
        config.hardware_compatibility_level = value
    return config


def _add_profiles(trt, builder, config, network, target: EngineTarget, channels: int) -> list[str]:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [t.name for t in inputs]
    unknown = sorted(set(names) - {"x", "sigma", "stage"})
    if "x" not in names or "sigma" not in names or unknown:
        raise InputError(
            f"the regulariser's inputs are {names}; expected x, sigma and (shared network) stage: "
            "export the package again with this diffunfold"
        )
    c = int(inputs[names.index("x")].shape[1])
    if c not in (-1, channels):
        raise InputError(f"the ONNX input x has {c} channels but the manifest says {channels}; export again")
    for p in target.profiles:
        prof = builder.create_optimization_profile()
        prof.set_shape("x", *p.x_shapes(channels))
        for n in names:
            if n != "x":
                prof.set_shape(n, *p.batch_shapes())
        config.add_optimization_profile(prof)
    return names


def _use_device(device: int) -> None:
    """Make GPU ``device`` current: TensorRT builds on the current CUDA device."""
    try:
        import cupy

        cupy.cuda.Device(device).use()
    except ImportError:
        if device != 0:
            raise InputError("building on a GPU other than 0 needs CuPy (or set CUDA_VISIBLE_DEVICES)") from None


def _set_timing_cache(config, cache, blob: bytes, cache_path: Path, log: Callable[[str], None]):
    """Give ``config`` the run's one timing cache: ``cache`` once made, else one from ``blob`` (the
    saved cache) when it fits this TensorRT and GPU, else a new one. Returns the cache."""
    if cache is not None:
        config.set_timing_cache(cache, ignore_mismatch=False)
        return cache
    cache = config.create_timing_cache(blob) if blob else None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if blob:
            log(f"  timing cache {cache_path} does not fit this TensorRT/GPU; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _engine_record(
    pkg: ModelPackage,
    tgt: EngineTarget,
    onnx_name: str,
    engine_path: Path,
    trt_version: str,
    gpu,
    seconds: float,
    fp32_layers: int,
    inputs,
) -> EngineRecord:
    """What an engine was built from, for what and how: checked before it is ever loaded."""
    from . import __version__

    return EngineRecord(
        target=tgt.name,
        onnx=onnx_name,
        onnx_sha256=pkg.manifest["files"][onnx_name]["sha256"],
        engine=engine_path.name,
        engine_sha256=sha256_file(engine_path),
        engine_bytes=engine_path.stat().st_size,
        tensorrt_version=trt_version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        hardware_compatibility=tgt.hardware_compatibility,
        precision=tgt.precision,
        profiles=[p.to_dict() for p in tgt.profiles],
        built=time.strftime("%Y-%m-%dT%H:%M:%S"),
        build_seconds=round(seconds, 2),
        fp32_layers=fp32_layers,
        inputs=inputs,
        diffunfold_version=__version__,
    )


def build_engines(
    package: str | Path | ModelPackage,
    target: str | Path | EngineTarget,
    out_dir: str | Path | None = None,
    timing_cache: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    device: int = 0,
    verbose: bool = False,
) -> list[EngineRecord]:
    """Build one TensorRT engine per regulariser ONNX of ``package`` for ``target`` on GPU
    ``device``, into ``out_dir`` (default ``<package>/engines/<target>``), each with its record.

    The timing cache ``<repo>/engines/built/<target>.timing.cache`` (or ``timing_cache``) is read
    first and saved after each engine, so rebuilds and the next package are much faster.
    """
    pkg = package if isinstance(package, ModelPackage) else ModelPackage.open(package)
    tgt = load_target(target)
    tgt.check_sizes(pkg.size_multiple)
    trt = require("tensorrt", "trt")
    gpu = _build_gpu(tgt, device, log)
    out = Path(out_dir) if out_dir else pkg.engine_dir(tgt.name)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(tgt)
    channels = int(pkg.manifest["data"]["model_channels"])
    logger = _trt_logger(trt, verbose)
    builder = trt.Builder(logger)
    _log_plan(pkg, tgt, gpu, str(trt.__version__), progress, log)

    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = None
    records: list[EngineRecord] = []
    t_all = time.perf_counter()
    for i, onnx_name in enumerate(pkg.regularizer_files):
        t0 = time.perf_counter()
        # the parser owns the weights the network points to: keep it alive until the build is done
        network, _parser = _parse_onnx(trt, builder, logger, pkg.file(onnx_name))
        config = _builder_config(trt, builder, tgt)
        cache = _set_timing_cache(config, cache, blob, cache_path, log)
        inputs = _add_profiles(trt, builder, config, network, tgt, channels)
        pinned = _pin_fp32(trt, network) if tgt.precision != "fp32" else []
        engine_path, record_path = engine_paths(out, onnx_name)
        record_path.unlink(missing_ok=True)  # a half-done rebuild must not look valid
        if progress:
            log(
                f"[{i + 1}/{len(pkg.regularizer_files)}] {onnx_name}: {network.num_layers} layers, "
                f"{len(pinned)} pinned to FP32; building (minutes on a cold timing cache) ..."
            )
        plan = builder.build_serialized_network(network, config)
        _write_plan(plan, config, onnx_name, tgt, engine_path, cache_path)
        seconds = time.perf_counter() - t0
        rec = _engine_record(pkg, tgt, onnx_name, engine_path, str(trt.__version__), gpu, seconds, len(pinned), inputs)
        write_json_atomic(record_path, rec.to_dict())  # the record last: its presence means "complete"
        os.chmod(record_path, 0o644)
        records.append(rec)
        log(f"  wrote {engine_path} ({rec.engine_bytes / 1e6:.1f} MB) in {seconds:.1f} s")
    log(f"built {len(records)} engine(s) in {time.perf_counter() - t_all:.1f} s; timing cache {cache_path}")
    return records


def _write_plan(plan, config, onnx_name: str, tgt: EngineTarget, engine_path: Path, cache_path: Path) -> None:
    """Write a built engine and the timing cache as it is now; an InputError where TensorRT built
    nothing (``plan`` is None)."""
    if plan is None:
        raise InputError(
            f"TensorRT could not build {onnx_name} for target {tgt.name} (see its messages above); "
            "a larger workspace_gib or smaller profiles in the target may help"
        )
    data = memoryview(plan)
    _write_bytes_atomic(engine_path, data)
    _write_bytes_atomic(cache_path, memoryview(config.get_timing_cache().serialize()))


def _build_gpu(tgt: EngineTarget, device: int, log: Callable[[str], None]) -> GPUInfo:
    """The GPU the engines are built on (made current), after saying where it differs from
    the target's; an InputError where none is visible."""
    gpu = current_gpu(device)
    if gpu is None:
        raise InputError(
            "no CUDA GPU is visible (neither CuPy nor nvidia-smi sees one): engines are built on the "
            "GPU they will run on"
        )
    warning = check_gpu_for_target(tgt, gpu)
    if warning:
        log(warning)
    _use_device(device)
    return gpu


def _log_plan(
    pkg: ModelPackage, tgt: EngineTarget, gpu: GPUInfo, trt_version: str, progress: bool, log: Callable[[str], None]
) -> None:
    log(
        f"building {len(pkg.regularizer_files)} engine(s) of {pkg.path} for target {tgt.name} "
        f"({tgt.precision}, {len(tgt.profiles)} profile(s)) on {gpu} with TensorRT {trt_version}"
    )
    if progress:
        for i, p in enumerate(tgt.profiles):
            log(f"  profile {i}: {p.describe()}")


# -- command line ---------------------------------------------------------------------------

DESCRIPTION = """\
Build TensorRT engines of a model package's regulariser(s) for one GPU target, on that GPU.

A target (engines/targets/<name>.toml) gives the GPU's compute capability, the precision (FP16:
normalisation, attention and the EDM preconditioning stay FP32), the workspace and the
optimisation profiles (batch, height, width ranges) the engines accept. Engines land in
PACKAGE/engines/<target>/ with a JSON record each; the runtime refuses an engine whose
record does not match the package, the TensorRT version or the GPU. Needs the trt extra.
"""

EPILOG = """\
examples:
  diffunfold build-engines --list                            the shipped targets
  diffunfold build-engines models/demo --target h100
  diffunfold build-engines models/demo --target my_gpu.toml  a target file of your own
  diffunfold build-engines models/demo --target l4 --timing-cache /tmp/l4.cache
"""


def add_build_engines_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("package", nargs="?", help="the model package folder (from `diffunfold export`)")
    parser.add_argument("--target", help="a target name (see --list) or the path of a target .toml file")
    parser.add_argument("--list", action="store_true", help="list the shipped targets and exit")
    parser.add_argument(
        "--timing-cache",
        metavar="PATH",
        help="TensorRT timing cache to read and update (default engines/built/<target>.timing.cache)",
    )
    parser.add_argument("--out", metavar="DIR", help="where to write the engines (default PACKAGE/engines/<target>)")
    parser.add_argument(
        "--gpu", type=V.Bounded(0, 63, integer=True), default=0, help="CUDA device index to build on (default 0)"
    )
    parser.add_argument("--verbose", action="store_true", help="show TensorRT's own INFO messages")


def run_build_engines(args: argparse.Namespace) -> int:
    if getattr(args, "list", False):
        targets = list_targets()
        if not targets:
            print(f"no targets in {TARGETS_DIR}; give --target PATH.toml")
            return 1
        for t in targets:
            print(t.summary())
        return 0
    if not args.package or not args.target:
        raise InputError(
            "give a package and --target NAME|PATH (or --list to see the targets), e.g. "
            "`diffunfold build-engines models/demo --target h100`"
        )
    build_engines(
        args.package,
        args.target,
        out_dir=args.out,
        timing_cache=args.timing_cache,
        device=getattr(args, "gpu", 0),
        verbose=getattr(args, "verbose", False),
    )
    return 0


__all__ = [
    "ENGINES_ROOT",
    "HARDWARE_COMPATIBILITY",
    "ONNX_TO_TRT_LAYER",
    "PRECISIONS",
    "RECORD_FORMAT",
    "TARGETS_DIR",
    "DimRange",
    "EngineRecord",
    "EngineTarget",
    "GPUInfo",
    "Profile",
    "add_build_engines_arguments",
    "attention_scopes",
    "build_engines",
    "cc_tuple",
    "check_gpu_for_target",
    "check_record",
    "choose_profile",
    "cupy_gpu",
    "current_gpu",
    "default_timing_cache",
    "engine_paths",
    "fp32_layer_policy",
    "list_targets",
    "load_target",
    "parse_target",
    "preview_fp32_layers",
    "rebuild_hint",
    "run_build_engines",
]
