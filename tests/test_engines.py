"""GPU targets, engine records and their refusal rules, the FP32 layer policy, and the TensorRT
backend's refusals on machines without TensorRT (its build is written against TensorRT 10's
Python API; the last test runs it where TensorRT and a GPU exist)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from diffunfold import engine_targets as ET
from diffunfold import engines as E
from diffunfold.engines import (
    EngineRecord,
    GPUInfo,
    build_engines,
    check_gpu_for_target,
    check_record,
    choose_profile,
    fp32_layer_policy,
    list_targets,
    load_target,
    parse_target,
    preview_fp32_layers,
)
from diffunfold.errors import InputError, MissingDependencyError
from diffunfold.package import ModelPackage
from diffunfold.runtime import backend_tensorrt as rt

SHIPPED = ("h100", "h200", "a100", "l4", "rtx4090", "jetson-orin")
H100 = GPUInfo("NVIDIA H100 80GB HBM3", "9.0")
TRT = "10.13.0.35"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- targets ----------------------------------------------------------------------------------


def test_every_shipped_target_parses():
    targets = {t.name: t for t in list_targets()}
    assert set(SHIPPED) <= set(targets), sorted(targets)
    for path in sorted(E.TARGETS_DIR.glob("*.toml")):
        t = load_target(path.stem)
        assert t == replace(load_target(path), path=t.path) and t.name == path.stem
        assert t.precision in E.PRECISIONS and t.hardware_compatibility in E.HARDWARE_COMPATIBILITY
        assert t.workspace_gib > 0 and t.profiles and t.description
        assert ET._CC.match(t.compute_capability)
        t.check_sizes(16)  # every shipped size fits a U-Net that halves the image four times
        for p in t.profiles:
            for r in (p.batch, p.height, p.width):
                assert 1 <= r.min <= r.opt <= r.max
        assert t.name in t.summary()
    for name in ("h100", "h200", "a100"):
        t = targets[name]
        assert t.precision == "fp16" and max(p.batch.max for p in t.profiles) == 16
        assert any(p.height.opt == 256 and p.height.max == 512 and p.batch.opt == 4 for p in t.profiles)
    assert targets["h100"].compute_capability == "9.0" and targets["a100"].compute_capability == "8.0"
    orin = targets["jetson-orin"]
    assert orin.workspace_gib == 2 and max(p.batch.max for p in orin.profiles) <= 4
    assert max(p.height.max for p in orin.profiles) <= 384


def _target(**over) -> dict:
    t = {
        "name": "t",
        "precision": "fp16",
        "workspace_gib": 1,
        "compute_capability": "9.0",
        "profiles": [
            {
                "batch": {"min": 1, "opt": 2, "max": 4},
                "height": {"min": 64, "opt": 128, "max": 256},
                "width": {"min": 64, "opt": 128, "max": 256},
            }
        ],
    }
    t.update(over)
    return t


@pytest.mark.parametrize(
    "over, message",
    [
        ({"precison": "fp16"}, r"unknown key\(s\) \['precison'\]; known keys: \['name', 'description'"),
        ({"precision": "int4"}, r"unknown precision 'int4'; choose one of \['fp16', 'fp32', 'bf16'\]"),
        ({"hardware_compatibility": "all"}, "unknown hardware_compatibility 'all'"),
        ({"compute_capability": "sm90"}, "compute_capability must look like"),
        ({"workspace_gib": 0}, "workspace_gib must be a positive number"),
        ({"name": "my gpu"}, "name must be letters"),
        ({"profiles": []}, "non-empty array"),
        (
            {"profiles": [{"batch": 1, "height": {"min": 64, "opt": 32, "max": 128}, "width": 64}]},
            r"height needs min <= opt <= max, got min=64, opt=32, max=128",
        ),
        (
            {"profiles": [{"batch": {"min": 0, "opt": 1, "max": 2}, "height": 64, "width": 64}]},
            "batch.min must be a positive integer, got 0",
        ),
        ({"profiles": [{"batch": {"min": 1, "max": 2}, "height": 64, "width": 64}]}, r"missing \['opt'\]"),
        (
            {"profiles": [{"batch": {"min": 1, "opt": 1, "max": 2, "step": 1}, "height": 64, "width": 64}]},
            r"unknown key\(s\) \['step'\]; known keys: \['min', 'opt', 'max'\]",
        ),
        ({"profiles": [{"batch": 1, "height": 64}]}, r"missing \['width'\]"),
        ({"profiles": [{"batch": 1, "height": 64, "width": 64, "depth": 3}]}, r"unknown key\(s\) \['depth'\]"),
        ({"profiles": [{"batch": 2.5, "height": 64, "width": 64}]}, "must be an integer or a table"),
        ({"profile": {"batch": 1, "height": 64, "width": 64}}, "either \\[profile\\] or \\[\\[profiles\\]\\]"),
    ],
)
def test_bad_targets_are_refused_clearly(over, message):
    with pytest.raises(InputError, match=message):
        parse_target(_target(**over))


def test_target_forms_and_lookup(tmp_path):
    single = _target(profile={"batch": 1, "height": 64, "width": {"min": 64, "opt": 64, "max": 128}})
    del single["profiles"]
    t = parse_target(single)
    assert t.profiles[0].batch.min == t.profiles[0].batch.max == 1 and t.profiles[0].width.max == 128
    assert (
        parse_target(
            {k: v for k, v in _target().items() if k != "profiles"} | {"profiles": _target()["profiles"]}
        ).precision
        == "fp16"
    )
    with pytest.raises(InputError, match="has no optimisation profile"):
        parse_target({"name": "x"})
    with pytest.raises(InputError, match=r"unknown target 'h1000'; known targets: a100, h100"):
        load_target("h1000")
    with pytest.raises(InputError, match="does not exist"):
        load_target(tmp_path / "none.toml")
    bad = tmp_path / "broken.toml"
    bad.write_text("name = \n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_target(bad)
    mine = tmp_path / "mine.toml"
    mine.write_text('precision = "fp32"\n[profile]\nbatch = 1\nheight = 96\nwidth = 96\n')
    t = load_target(str(mine))
    assert t.name == "mine" and t.precision == "fp32" and t.path == mine and t.compute_capability is None
    with pytest.raises(
        InputError,
        match=r"profile 0 height.min = 96, profile 0 height.opt = 96, .* not a multiple of "
        r"64, the package's size multiple",
    ):
        t.check_sizes(64)
    t.check_sizes(32)


def test_choose_profile_prefers_the_nearest_optimum():
    profiles = load_target("h100").profiles
    assert choose_profile(profiles, 1, 64, 64) == 0
    assert choose_profile(profiles, 4, 512, 512) == 1
    assert choose_profile(profiles, 4, 256, 256) == 1  # both cover it; profile 1 is tuned at 256
    assert choose_profile(profiles, 2, 128, 128) == 0
    with pytest.raises(
        InputError,
        match=r"batch 32 at 256x256 \(have profile 0: batch 1..16 \(opt 4\), height "
        r"64..256 \(opt 128\).*; profile 1: batch 1..16",
    ):
        choose_profile(profiles, 32, 256, 256)
    with pytest.raises(InputError, match="covers batch 1 at 64x1024"):
        choose_profile(profiles, 1, 64, 1024)


def test_gpu_must_match_the_target_at_build_time():
    h100, a100 = load_target("h100"), load_target("a100")
    assert check_gpu_for_target(h100, H100) is None
    with pytest.raises(InputError, match=r"target 'a100' is for compute capability 8.0 but this GPU is NVIDIA H100"):
        check_gpu_for_target(a100, H100)
    warn = check_gpu_for_target(replace(a100, hardware_compatibility="ampere_plus"), H100)
    assert warn.startswith("warning:") and "ampere_plus" in warn
    with pytest.raises(InputError, match="Ampere or newer"):
        check_gpu_for_target(replace(a100, hardware_compatibility="ampere_plus"), GPUInfo("Tesla T4", "7.5"))


# -- records ----------------------------------------------------------------------------------


def _engine(tmp_path, content=b"plan bytes", onnx_sha="a" * 64, **over):
    d = tmp_path / "pkg" / "engines" / "h100"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "regularizer.engine"
    path.write_bytes(content)
    rec = EngineRecord(
        target="h100",
        onnx="regularizer.onnx",
        onnx_sha256=onnx_sha,
        engine=path.name,
        engine_sha256=_sha(content),
        engine_bytes=len(content),
        tensorrt_version=TRT,
        gpu_name=H100.name,
        compute_capability="9.0",
        hardware_compatibility="none",
        precision="fp16",
        profiles=[p.to_dict() for p in load_target("h100").profiles],
        built="2025-01-01T00:00:00",
        build_seconds=61.5,
        fp32_layers=57,
        inputs=["x", "sigma", "stage"],
    )
    return path, replace(rec, **over)


def test_check_record_accepts_the_matching_engine(tmp_path):
    path, rec = _engine(tmp_path)
    check_record(rec, path, TRT, H100, onnx_sha256="a" * 64)
    check_record(rec, path, TRT, H100)  # no package manifest beside it: the ONNX check is skipped
    # same compute capability and another SKU is fine once the target allows it
    check_record(
        replace(rec, hardware_compatibility="same_compute_capability"),
        path,
        TRT,
        GPUInfo("NVIDIA H100 PCIe", "9.0"),
        onnx_sha256="a" * 64,
    )
    check_record(replace(rec, hardware_compatibility="ampere_plus"), path, TRT, GPUInfo("NVIDIA L4", "8.9"))


@pytest.mark.parametrize(
    "case, message",
    [
        (
            "gpu name",
            r"was built on NVIDIA H100 80GB HBM3 but this GPU is NVIDIA H100 PCIe .*hardware_compatibility 'none'",
        ),
        (
            "compute capability",
            r"built on NVIDIA H100 80GB HBM3 \(sm 9.0\), compute capability 9.0, but this GPU is "
            r"NVIDIA A100-SXM4-80GB \(sm 8.0\)",
        ),
        ("same cc", r"compute capability 9.0, but this GPU is NVIDIA L4 \(sm 8.9\)"),
        ("ampere_plus", r"built for Ampere and newer GPUs .* this GPU is Tesla T4 \(sm 7.5\)"),
        ("tensorrt", r"built with TensorRT 10.13.0.35 but TensorRT 10.14.1.48 is installed"),
        ("engine byte", r"does not match its record \(sha256 .* != recorded .*\): the file was changed"),
        (
            "onnx",
            r"built from another regularizer.onnx \(sha256 aaaaaaaaaaaa; the package's is now bbbbbbbbbbbb\): "
            r"the package was exported again",
        ),
        ("missing", "is missing though its record exists"),
    ],
)
def test_check_record_refuses_what_differs(tmp_path, case, message):
    path, rec = _engine(tmp_path)
    gpu, trt_version, onnx = H100, TRT, "a" * 64
    if case == "gpu name":
        gpu = GPUInfo("NVIDIA H100 PCIe", "9.0")
    elif case == "compute capability":
        gpu = GPUInfo("NVIDIA A100-SXM4-80GB", "8.0")
    elif case == "same cc":
        rec, gpu = replace(rec, hardware_compatibility="same_compute_capability"), GPUInfo("NVIDIA L4", "8.9")
    elif case == "ampere_plus":
        rec, gpu = replace(rec, hardware_compatibility="ampere_plus"), GPUInfo("Tesla T4", "7.5")
    elif case == "tensorrt":
        trt_version = "10.14.1.48"
    elif case == "engine byte":
        data = bytearray(path.read_bytes())
        data[3] ^= 1
        path.write_bytes(bytes(data))
    elif case == "onnx":
        onnx = "b" * 64
    elif case == "missing":
        path.unlink()
    with pytest.raises(InputError, match=message) as info:
        check_record(rec, path, trt_version, gpu, onnx_sha256=onnx)
    assert f"diffunfold build-engines {tmp_path / 'pkg'} --target h100" in str(info.value)


def test_record_json_roundtrip_and_damage(tmp_path):
    path, rec = _engine(tmp_path)
    rpath = path.with_suffix(".json")
    rpath.write_text(json.dumps(rec.to_dict()))
    back = EngineRecord.load(rpath)
    assert back == rec and back.format == "diffunfold-engine/1"
    assert [p.describe() for p in back.profile_ranges()] == [p.describe() for p in load_target("h100").profiles]
    for field in (
        "compute_capability",
        "gpu_name",
        "engine_sha256",
        "onnx_sha256",
        "tensorrt_version",
        "hardware_compatibility",
        "precision",
        "profiles",
        "built",
        "build_seconds",
        "fp32_layers",
    ):
        assert field in rec.to_dict()
    rpath.write_text(json.dumps({**rec.to_dict(), "format": "other/2"}))
    with pytest.raises(InputError, match="expected 'diffunfold-engine/1'"):
        EngineRecord.load(rpath)
    rpath.write_text(json.dumps({k: v for k, v in rec.to_dict().items() if k != "engine_sha256"}))
    with pytest.raises(InputError, match=r"lacks \['engine_sha256'\]"):
        EngineRecord.load(rpath)
    rpath.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        EngineRecord.load(rpath)
    with pytest.raises(InputError, match="is missing"):
        EngineRecord.load(tmp_path / "nothing.json")


# -- with a real exported package -------------------------------------------------------------


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    pytest.importorskip("torch", reason="exporting a package needs the export extra")
    pytest.importorskip("onnx", reason="exporting a package needs the export extra")
    from helpers import tiny_model

    from diffunfold.export import export_model

    root = tmp_path_factory.mktemp("engines")
    make = lambda seed: tiny_model(shared=True, stages=2, seed=seed)  # noqa: E731
    return root, make, export_model(make(0), root / "pkg", check=False, log=lambda s: None)


def test_fp32_policy_on_the_exported_node_names(package):
    import onnx

    from diffunfold.engines import _tensorrt_onnx

    _, _, pkg = package
    parsed = onnx.load_from_string(_tensorrt_onnx(pkg.file("regularizer.onnx")))  # fused attention spelled out
    nodes = [(n.op_type, n.name) for n in parsed.graph.node]
    by_op = lambda op: [name for o, name in nodes if o == op]  # noqa: E731
    pinned = set(preview_fp32_layers(nodes))
    norms, softmax, matmul = by_op("InstanceNormalization"), by_op("Softmax"), by_op("MatMul")
    assert norms and softmax and len(matmul) == 2 * len(softmax)
    assert set(norms) <= pinned and set(softmax) <= pinned and set(matmul) <= pinned
    assert not pinned & set(by_op("Conv") + by_op("Gemm") + by_op("Sigmoid") + by_op("Reshape") + by_op("Resize"))
    # the logit scale between the attention MatMuls, and the EDM preconditioning r = c_skip x + c_out F
    scopes = {name.rsplit("/", 1)[0] for name in softmax}
    assert all(any(p.startswith(f"{s}/Mul") for p in pinned) for s in scopes)
    top = [name for o, name in nodes if name.count("/") == 2 and o in ("Mul", "Add", "Div", "Pow", "Log")]
    assert top and set(top) <= pinned
    # the ResBlocks' elementwise ops run in FP16
    assert not any("/enc.0/enc.0.0/" in n and "norm" not in n for n in pinned)
    # direct calls with TensorRT's layer types; also the norm's affine Mul/Add stays FP16
    norm = norms[0]
    assert fp32_layer_policy("NORMALIZATION", norm)
    assert fp32_layer_policy("PLUGIN_V2", norm)  # InstanceNormalization_TRT plugin
    assert not fp32_layer_policy("ELEMENTWISE", norm.replace("InstanceNormalization", "Mul"))
    assert fp32_layer_policy("MATRIX_MULTIPLY", matmul[0])
    assert fp32_layer_policy("MATRIX_MULTIPLY", "/reg/unet/mid/attn/whatever", frozenset())
    assert not fp32_layer_policy("MATRIX_MULTIPLY", "/reg/unet/map0/Gemm")
    assert not fp32_layer_policy("CONVOLUTION", "/reg/unet/mid/mid.1/qkv/Conv", frozenset(scopes))
    assert fp32_layer_policy("REDUCE", "/reg/unet/x/ReduceMean") and fp32_layer_policy("ELEMENTWISE", "/a/b/Pow_2")


def _fake_engines(pkg: ModelPackage, target="h100", gpu=H100, trt_version=TRT) -> Path:
    d = pkg.engine_dir(target)
    d.mkdir(parents=True, exist_ok=True)
    for onnx_name in pkg.regularizer_files:
        data = f"plan of {onnx_name}".encode()
        engine_path, record_path = E.engine_paths(d, onnx_name)
        engine_path.write_bytes(data)
        rec = EngineRecord(
            target=target,
            onnx=onnx_name,
            onnx_sha256=pkg.manifest["files"][onnx_name]["sha256"],
            engine=engine_path.name,
            engine_sha256=_sha(data),
            engine_bytes=len(data),
            tensorrt_version=trt_version,
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability,
            hardware_compatibility="none",
            precision="fp16",
            profiles=[p.to_dict() for p in load_target("h100").profiles],
            built="now",
            build_seconds=1.0,
            fp32_layers=3,
        )
        record_path.write_text(json.dumps(rec.to_dict()))
    return d


def test_find_engines_and_status(package, monkeypatch, tmp_path):
    import shutil

    root, make, pkg0 = package
    pkg = ModelPackage.open(shutil.copytree(pkg0.path, tmp_path / "pkg"))
    assert (
        rt.tensorrt_status(pkg).startswith("tensorrt is not installed (pip install 'diffunfold[trt,gpu]'")
        or rt._tensorrt_version() is not None
    )
    monkeypatch.setattr(rt, "_tensorrt_version", lambda: TRT)
    monkeypatch.setattr(rt, "cupy_gpu", lambda index=0: None)
    assert rt.tensorrt_status(pkg).startswith("CuPy cannot see a CUDA device")
    monkeypatch.setattr(rt, "cupy_gpu", lambda index=0: H100)
    status = rt.tensorrt_status(pkg)
    assert status.startswith("no engines built for this GPU in") and f"build-engines {pkg.path} --target" in status
    assert not rt.tensorrt_status(None).startswith("ok")

    d = _fake_engines(pkg)
    target, found = rt.find_engines(pkg, H100, TRT)
    assert target == "h100" and [p.name for p, _ in found] == ["regularizer.engine"]
    assert rt.tensorrt_status(pkg).startswith("ok (TensorRT 10.13.0.35, target h100, 1 engine(s)")
    # an explicit folder: the target's own or the one above it
    assert rt.find_engines(pkg, H100, TRT, engines=d)[0] == "h100"
    # another TensorRT, another GPU: refused, saying why, per target folder
    with pytest.raises(InputError, match=r"h100: engine .* built with TensorRT 10.13.0.35 but TensorRT 10.2.0"):
        rt.find_engines(pkg, H100, "10.2.0")
    status = rt.tensorrt_status(pkg)
    monkeypatch.setattr(rt, "cupy_gpu", lambda index=0: GPUInfo("NVIDIA L4", "8.9"))
    assert "this GPU is NVIDIA L4 (sm 8.9)" in rt.tensorrt_status(pkg) and status.startswith("ok")
    # a second target folder for the L4 is picked on the L4
    _fake_engines(pkg, "l4", GPUInfo("NVIDIA L4", "8.9"))
    assert rt.tensorrt_status(pkg).startswith("ok (TensorRT 10.13.0.35, target l4")

    # the package exported again (other weights): its engines are refused, naming the ONNX
    from diffunfold.export import export_model

    saved = shutil.copytree(d, tmp_path / "saved")
    again = export_model(make(1), pkg.path, overwrite=True, check=False, log=lambda s: None)
    assert not (again.path / "engines").exists()  # the export replaced the folder; bring the old engines back
    shutil.copytree(saved, again.engine_dir("h100"))
    monkeypatch.setattr(rt, "cupy_gpu", lambda index=0: H100)
    status = rt.tensorrt_status(again)
    assert "built from another regularizer.onnx" in status and "exported again" in status
    rec = EngineRecord.load(again.engine_dir("h100") / "regularizer.json")
    with pytest.raises(InputError, match="exported again"):  # the manifest three folders up is read
        check_record(rec, again.engine_dir("h100") / "regularizer.engine", TRT, H100)


def test_tensorrt_backend_refuses_without_gpu_or_tensorrt(package):
    from diffunfold.runtime.backends import available_backends, create_backend, cuda_available

    _, _, pkg = package
    with pytest.raises(InputError, match="NVIDIA GPU .* use backend='onnxruntime'"):
        create_backend(pkg, "tensorrt", "cpu")
    with pytest.raises(InputError, match="NVIDIA GPU"):
        rt.TensorRTBackend(pkg, "cpu")
    assert available_backends(pkg, "cpu")["tensorrt"] == "needs a CUDA device"
    if rt._tensorrt_version() is None:
        with pytest.raises(MissingDependencyError, match=r"diffunfold\[trt\]"):
            rt.TensorRTBackend(pkg, "cuda")
    if not cuda_available():
        with pytest.raises(InputError, match="CUDA device"):
            create_backend(pkg, "tensorrt", "cuda")


def test_build_engines_needs_tensorrt_and_a_fitting_target(package, tmp_path):
    _, _, pkg = package
    odd = tmp_path / "odd.toml"
    odd.write_text("[profile]\nbatch = 1\nheight = 65\nwidth = 64\n")
    if pkg.size_multiple > 1:
        with pytest.raises(InputError, match=r"height.min = 65, .* not a multiple of 2"):
            build_engines(pkg, odd, log=lambda s: None)
    if rt._tensorrt_version() is None:
        with pytest.raises(MissingDependencyError, match=r"pip install 'diffunfold\[trt\]'"):
            build_engines(pkg.path, "h100", log=lambda s: None)
    assert E.default_timing_cache(load_target("h100")) == E.ENGINES_ROOT / "built" / "h100.timing.cache"


def test_cli_list_and_usage(capsys):
    parser = argparse.ArgumentParser()
    E.add_build_engines_arguments(parser)
    assert E.run_build_engines(parser.parse_args(["--list"])) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SHIPPED) and "profile 0: batch" in out
    with pytest.raises(InputError, match="give a package and --target"):
        E.run_build_engines(parser.parse_args(["somewhere"]))
    args = parser.parse_args(["pkg", "--target", "h100", "--timing-cache", "c", "--out", "o"])
    assert (args.package, args.target, args.timing_cache, args.out, args.gpu) == ("pkg", "h100", "c", "o", 0)
    assert "build-engines" in parser.epilog


def test_engines_and_tensorrt_runtime_are_torch_free(run_without_torch):
    run_without_torch(
        """
        import diffunfold.engines, diffunfold.runtime.backend_tensorrt
        assert diffunfold.engines.load_target("h100").name == "h100"
        assert "tensorrt" not in sys.modules
    """,
        timeout=60,
    )


# -- the backend's plumbing, on fakes of TensorRT and CuPy with real pointers -------------------
#
# The fake engine reads x, sigma and stage from the raw addresses bound with set_tensor_address
# and writes r = sigma * x + stage there; a fake CUDA graph replays the enqueue with the
# addresses bound at capture time, as a real graph does. This checks profile choice, shapes,
# the persistent sigma/stage buffers refilled before each launch, and capture/replay rules.


def _at(ptr: int, shape, dtype) -> np.ndarray:
    import ctypes

    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_char * n).from_address(ptr), dtype=dtype).reshape(shape)


class _Arr(np.ndarray):
    @property
    def data(self):  # CuPy's arr.data.ptr
        return type("Ptr", (), {"ptr": self.ctypes.data})()


class _Stream:
    streams: dict = {}
    current: list = []

    def __init__(self, non_blocking=False, ptr=None):
        self.ptr = ptr if ptr is not None else 1000 + len(_Stream.streams)
        self.capture = None
        _Stream.streams[self.ptr] = self

    def __enter__(self):
        _Stream.current.append(self)
        return self

    def __exit__(self, *exc):
        _Stream.current.pop()

    def record(self):
        return object()

    def wait_event(self, event):
        pass

    def synchronize(self):
        assert self.capture is None, "synchronize inside a capture"

    def begin_capture(self):
        self.capture = []

    def end_capture(self):
        ops, self.capture = self.capture, None
        return type("Graph", (), {"launch": lambda g, stream=None: [op() for op in ops]})()


def _fake_cupy():
    import types

    cp = types.ModuleType("cupy")
    cp.ndarray, cp.float32 = _Arr, np.float32
    cp.ascontiguousarray = lambda a, dtype=None: np.ascontiguousarray(a, dtype=dtype).view(_Arr)
    cp.empty_like = lambda a: np.empty_like(a).view(_Arr)
    cp.empty = lambda shape, dtype=np.float32: np.empty(shape, dtype).view(_Arr)
    cp.zeros = lambda shape, dtype=np.float32: np.zeros(shape, dtype).view(_Arr)
    cp.asarray = lambda a: np.array(a).view(_Arr)
    null = _Stream(ptr=0)
    cuda = types.SimpleNamespace(
        Stream=_Stream,
        get_current_stream=lambda: (_Stream.current or [null])[-1],
        Device=lambda i: contextlib.nullcontext(),
    )
    cp.cuda = cuda
    return cp


def _fake_tensorrt(profiles, channels, stage: bool, log: list):
    import types

    trt = types.ModuleType("tensorrt")
    trt.__version__ = TRT
    trt.Logger = type("Logger", (), {"WARNING": 2, "INFO": 3, "__init__": lambda self, level=2: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dtype: dtype
    names = ["x", "sigma"] + (["stage"] if stage else []) + ["r"]
    dtypes = {"x": np.float32, "sigma": np.float32, "stage": np.int64, "r": np.float32}

    class Context:
        def __init__(self):
            self.shapes, self.addr, self.profile = {}, {}, 0

        def set_optimization_profile_async(self, p, stream):
            self.profile = p
            return True

        def set_input_shape(self, name, shape):
            p = profiles[self.profile]
            if name == "x" and not p.covers(shape[0], shape[2], shape[3]):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self.shapes["x"]

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            shape, addr = self.shapes["x"], dict(self.addr)  # a graph bakes in today's addresses

            def run():
                b = shape[0]
                sigma = _at(addr["sigma"], (b,), np.float32)[:, None, None, None]
                k = _at(addr["stage"], (b,), np.int64)[:, None, None, None] if stage else 0
                _at(addr["r"], shape, np.float32)[...] = sigma * _at(addr["x"], shape, np.float32) + k
                log.append(("run", shape))

            s = _Stream.streams[stream]
            if s.capture is not None:
                s.capture.append(run)
                log.append(("capture", shape))
            else:
                run()
            return True

    class Engine:
        num_io_tensors, num_optimization_profiles = len(names), len(profiles)

        def get_tensor_name(self, i):
            return names[i]

        def get_tensor_mode(self, n):
            return trt.TensorIOMode.OUTPUT if n == "r" else trt.TensorIOMode.INPUT

        def get_tensor_dtype(self, n):
            return dtypes[n]

        def get_tensor_profile_shape(self, n, p):
            q = profiles[p]
            return [
                (q.batch.min, channels, q.height.min, q.width.min),
                (q.batch.opt, channels, q.height.opt, q.width.opt),
                (q.batch.max, channels, q.height.max, q.width.max),
            ]

        def create_execution_context(self):
            return Context()

    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: Engine())
    return trt


@pytest.mark.parametrize("graphs", [False, True])
def test_tensorrt_backend_plumbing_on_fakes(package, tmp_path, monkeypatch, graphs):
    import shutil

    _, _, pkg0 = package
    pkg = ModelPackage.open(shutil.copytree(pkg0.path, tmp_path / "pkg"))
    _fake_engines(pkg)
    log: list = []
    c = int(pkg.manifest["data"]["model_channels"])
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(load_target("h100").profiles, c, pkg.shared, log))
    monkeypatch.setattr(rt, "cupy_gpu", lambda index=0: H100)
    be = rt.TensorRTBackend(pkg, "cuda", cuda_graphs=graphs)
    assert be.target == "h100" and "target h100" in be.describe() and ("CUDA graphs" in be.describe()) == graphs
    cp = sys.modules["cupy"]
    x = cp.asarray(np.random.default_rng(0).standard_normal((2, c, 64, 96)).astype(np.float32))
    for sigma, k in ((80.0, 0), (2.5, 1), (0.002, 1)):
        r = be.regularize(x, sigma, k)
        np.testing.assert_allclose(r, np.float32(sigma) * np.asarray(x) + k, rtol=1e-6)
        assert r.data.ptr != x.data.ptr
    x2 = cp.asarray(np.asarray(x)[::-1].copy())  # new contents at the same shape: the graph reads them
    np.testing.assert_allclose(be.regularize(x2, 0.5, 1), 0.5 * np.asarray(x2) + 1, rtol=1e-6)
    captures = [e for e in log if e[0] == "capture"]
    assert len(captures) == (1 if graphs else 0)  # one graph serves every noise level and stage
    assert be._engines[0].profile == 0
    big = cp.asarray(np.ones((1, c, 320, 256), np.float32))
    np.testing.assert_allclose(be.regularize(big, 3.0, 0), 3.0)
    assert be._engines[0].profile == 1
    assert len([e for e in log if e[0] == "capture"]) == (2 if graphs else 0)  # a new shape is captured again
    np.testing.assert_allclose(be.regularize(x, 1.5, 0), 1.5 * np.asarray(x), rtol=1e-6)
    with pytest.raises(InputError, match=r"no optimisation profile .* covers batch 32 at 64x96 \(have profile 0"):
        be.regularize(cp.asarray(np.zeros((32, c, 64, 96), np.float32)), 1.0, 0)
    with pytest.raises(InputError, match="takes CuPy arrays"):
        be.regularize(np.zeros((1, c, 64, 64), np.float32), 1.0, 0)
    with pytest.raises(InputError, match=rf"x must be \(B, {c}, H, W\)"):
        be.regularize(cp.asarray(np.zeros((1, c + 1, 64, 64), np.float32)), 1.0, 0)
    with pytest.raises(InputError, match="stage 5 out of range"):
        be.regularize(x, 1.0, 5)
    tau, gamma = be.weights(np.array([80.0, 1.0, 0.01], np.float32))
    assert tau.shape == gamma.shape == (3, pkg.stages)


# -- where TensorRT exists (never on the machines here) ---------------------------------------


def test_build_and_run_engine_against_onnxruntime(package, tmp_path):
    trt = pytest.importorskip(
        "tensorrt",
        reason="TensorRT is not installable on these machines (its wheels are "
        "stubs); the build is written against TensorRT 10's Python API",
    )
    cp = pytest.importorskip("cupy")
    gpu = E.current_gpu()
    if gpu is None:
        pytest.skip("no CUDA GPU")
    from diffunfold.runtime.backends import OnnxRuntimeBackend

    _, _, pkg0 = package
    import shutil

    pkg = ModelPackage.open(shutil.copytree(pkg0.path, tmp_path / "pkg"))
    target = tmp_path / "here.toml"
    target.write_text(
        f'compute_capability = "{gpu.compute_capability}"\nprecision = "fp16"\nworkspace_gib = 2\n'
        "[[profiles]]\nbatch = { min = 1, opt = 2, max = 4 }\nheight = { min = 16, opt = 32, max = 64 }\n"
        "width = { min = 16, opt = 32, max = 64 }\n"
    )
    records = build_engines(pkg, target, timing_cache=tmp_path / "here.cache", log=lambda s: None)
    assert records[0].tensorrt_version == trt.__version__ and records[0].fp32_layers > 0
    ref = OnnxRuntimeBackend(pkg, "cpu")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 32, 48)).astype(np.float32)
    for graphs in (False, True):
        be = rt.TensorRTBackend(pkg, "cuda", cuda_graphs=graphs)
        for sigma, k in ((80.0, 0), (1.0, 1), (0.002, 0)):
            got = cp.asnumpy(be.regularize(cp.asarray(x), sigma, k))
            want = ref.regularize(x, sigma, k)
            assert np.all(np.isfinite(got))
            assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 2e-2, (graphs, sigma, k)
        tau, gamma = be.weights(np.array([1.0, 0.5], np.float32))
        assert tau.shape == (2, pkg.stages)
