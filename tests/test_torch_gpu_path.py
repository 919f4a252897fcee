"""The torch GPU path: ``diffunfold add-torch-weights`` on a copy of the bundled image-small, and
the torch backend's options (precision, cuda_graphs, compile).

Tolerances (``max|a - b| / max|b|``):
* the weights read back from the ONNX graphs, torch against ONNX Runtime: 1e-4 per network call
  (the command's own check; measured about 7e-7) and 1e-4 over a 4-step solve (measured 5e-7);
* compile=True against eager on the CPU: 1e-5 over a solve (measured 1e-6);
* on CUDA: CUDA graphs against eager, both fp32: 1e-5; fp16 against fp32: 5e-3 for one network
  call (measured on the CPU's half precision: about 1.2e-3 at every noise level) and 1e-2 over
  a solve (2e-4 on the CPU).

The CUDA tests (names with "cuda", so ``pytest -k "cupy or cuda"`` on a GPU machine picks them)
skip where torch sees no CUDA device.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs torch (the train extra)")
pytest.importorskip("onnx", reason="reading weights back from ONNX needs onnx (the export extra)")
pytestmark = pytest.mark.torch

from helpers import quiet, rel_err, tiny_model  # noqa: E402
from safetensors import safe_open  # noqa: E402

from diffunfold.cli import main  # noqa: E402
from diffunfold.errors import InputError  # noqa: E402
from diffunfold.export import torch_weights  # noqa: E402
from diffunfold.export.torch_weights import TORCH_WEIGHTS, add_torch_weights  # noqa: E402
from diffunfold.package import ModelPackage, write_manifest  # noqa: E402
from diffunfold.physics import make_operator  # noqa: E402
from diffunfold.runtime import Solver  # noqa: E402
from diffunfold.runtime.backend_torch import half_precision_unets  # noqa: E402
from diffunfold.runtime.backend_torch_graphs import GraphCache  # noqa: E402

IMAGE_SMALL = Path(__file__).resolve().parents[1] / "samples" / "models" / "image-small"
CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="torch sees no CUDA device (the lent GPU machine runs these: bench/gpu_session.sh)",
)


def _copy(tmp: Path, source: Path = IMAGE_SMALL, keep_weights: bool = False) -> Path:
    """A copy of ``source``; without torch weights unless ``keep_weights`` (the bundled packages
    are to be given them with this command: then they are taken out of the copy again)."""
    path = Path(shutil.copytree(source, tmp / source.name, symlinks=True))
    pkg = ModelPackage.open(path)
    if pkg.torch_weights_file and not keep_weights:
        manifest = dict(pkg.manifest, networks=dict(pkg.manifest["networks"], torch_weights=None))
        (path / pkg.torch_weights_file).unlink()
        write_manifest(path, manifest, [n for n in manifest["files"] if n != pkg.torch_weights_file])
    return path


@pytest.fixture(scope="module")
def with_weights(tmp_path_factory) -> tuple[Path, torch_weights.WeightsCheck]:
    """A copy of the bundled image-small with model.safetensors added (once for the module)."""
    copy = _copy(tmp_path_factory.mktemp("pkg"))
    _, check = add_torch_weights(copy, **quiet)
    return copy, check


def _blur_problem(batch: int = 1, size: int = 32):
    x = np.random.default_rng(0).uniform(0, 1, (batch, 3, size, size)).astype(np.float32)
    op = make_operator("gaussian_blur", (size, size), sigma=1.5)
    return op.measure(x, 0.02, seed=0), op


# -- add-torch-weights ---------------------------------------------------------------------------


def test_added_weights_open_and_keep_the_onnx_files(with_weights):
    path, check = with_weights
    before = json.loads((IMAGE_SMALL / "manifest.json").read_text())
    pkg = ModelPackage.open(path)  # every checksum, the manifest's digest included
    assert pkg.torch_weights_file == TORCH_WEIGHTS and TORCH_WEIGHTS in pkg.manifest["files"]
    for name in pkg.regularizer_files + [pkg.weights_file]:
        assert pkg.manifest["files"][name] == before["files"][name]  # the ONNX files untouched
    assert {k: v for k, v in pkg.manifest.items() if k not in ("networks", "files", "manifest_sha256")} == {
        k: v for k, v in before.items() if k not in ("networks", "files", "manifest_sha256")
    }
    assert check.passed and check.worst < 1e-5 and len(check.per_stage) == pkg.stages
    with safe_open(str(path / TORCH_WEIGHTS), "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
        assert "ONNX graphs" in f.metadata()["source"]
    assert dtypes["regularizers.0.unet.input_conv.weight"] == torch.float16
    assert dtypes["regularizers.0.unet.freqs"] == dtypes["tau.freqs"] == torch.float32  # buffers as they are
    assert not [p for p in path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_torch_backend_on_added_weights_matches_onnxruntime(with_weights):
    path, _ = with_weights
    y, op = _blur_problem()
    got = Solver.load(path, backend="torch").solve(y, op, steps=4, seed=1)
    want = Solver.load(path, backend="onnxruntime").solve(y, op, steps=4, seed=1)
    assert got.timing.network_calls == want.timing.network_calls > 0
    assert rel_err(got.images, want.images) < 1e-4


def test_existing_weights_are_refused_without_overwrite(with_weights, tmp_path, capsys):
    path = _copy(tmp_path, with_weights[0], keep_weights=True)
    before = (path / "manifest.json").read_bytes()
    assert main(["add-torch-weights", str(path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (path / "manifest.json").read_bytes() == before
    assert main(["add-torch-weights", str(path), "--overwrite"]) == 0
    assert ModelPackage.open(path).torch_weights_file == TORCH_WEIGHTS


def test_a_stray_weights_file_is_refused(tmp_path):
    path = _copy(tmp_path)
    (path / TORCH_WEIGHTS).write_bytes(b"not listed")
    with pytest.raises(InputError, match="does not list"):
        add_torch_weights(path, **quiet)


@pytest.mark.parametrize("link", ["weights.onnx", "manifest.json", TORCH_WEIGHTS, "folder"])
def test_symlinks_are_refused(tmp_path, link):
    path = _copy(tmp_path)
    if link == "folder":
        target, path = path, tmp_path / "linked"
        path.symlink_to(target, target_is_directory=True)
    elif link == TORCH_WEIGHTS:
        (path / link).symlink_to(tmp_path / "elsewhere.safetensors")  # dangling: still a link
    else:  # a link inside the folder (one leading out is refused by ModelPackage.open already)
        (path / "real").mkdir()
        shutil.move(path / link, path / "real" / link)
        (path / link).symlink_to(Path("real") / link)
    with pytest.raises(InputError, match="symbolic link"):
        add_torch_weights(path, overwrite=True, **quiet)
    assert not (tmp_path / "elsewhere.safetensors").exists()


def test_weights_that_fail_the_check_are_not_written(tmp_path, monkeypatch):
    path = _copy(tmp_path)
    before, names = (path / "manifest.json").read_bytes(), sorted(p.name for p in path.iterdir())
    real = torch_weights.package_tensors

    def damaged(pkg):
        state = real(pkg)
        state["regularizers.0.unet.out_conv.bias"] = state["regularizers.0.unet.out_conv.bias"] + 0.5
        return state

    monkeypatch.setattr(torch_weights, "package_tensors", damaged)
    with pytest.raises(InputError, match="nothing was written"):
        add_torch_weights(path, **quiet)
    assert sorted(p.name for p in path.iterdir()) == names  # no temporary file left either
    assert (path / "manifest.json").read_bytes() == before


# -- the backend's options on the CPU ------------------------------------------------------------


@pytest.mark.parametrize(
    "options,match",
    [
        ({"precision": "fp16"}, "CUDA GPU"),
        ({"cuda_graphs": True}, "device='cuda'"),
        ({"precision": "bf16"}, "precision must be one of"),
        ({"compile": "yes"}, "compile must be True or False"),
    ],
)
def test_cpu_refuses_what_needs_cuda(tiny_packages, options, match):
    _, pkg = tiny_packages["shared"]
    with pytest.raises(InputError, match=match):
        Solver.load(pkg, backend="torch", **options)


def test_torch_options_belong_to_torch(tiny_packages):
    _, pkg = tiny_packages["shared"]
    with pytest.raises(InputError, match="belong to torch"):
        Solver.load(pkg, backend="onnxruntime", compile=True)
    assert Solver.load(pkg, backend="torch", compile=False).backend_name == "torch on cpu (fp32)"


def test_half_precision_keeps_the_float32_parts():
    """The fp16 network's construction, checked on the CPU's half precision (the backend itself
    refuses fp16 on a CPU: it is slow there)."""
    model = tiny_model(shared=True, stages=2)
    half = tiny_model(shared=True, stages=2)
    half_precision_unets(torch, half)
    unet = half.regularizers[0].unet.unet
    assert {p.dtype for p in unet.parameters()} == {torch.float16} and unet.freqs.dtype == torch.float32
    assert {p.dtype for p in half.tau.parameters()} == {torch.float32}
    x = torch.randn(2, 3, 16, 16) * 2
    sigma = torch.tensor([2.0, 0.1])
    with torch.inference_mode():
        want, got = model.regularize(x, sigma, 1), half.regularize(x, sigma, 1)
    assert got.dtype == torch.float32 and rel_err(got.numpy(), want.numpy()) < 5e-3


class _FakeCuda:
    """Enough of torch.cuda to run GraphCache on the CPU: a "graph" records the network call made
    while capturing and replays it on the same (static) tensors."""

    def __init__(self, log: list):
        self.log, self.capturing = log, None

    def current_stream(self, device):
        return SimpleNamespace(name="current", wait_stream=lambda s: self.log.append(f"current waits {s.name}"))

    def Stream(self, device):  # noqa: N802 (torch's name)
        return SimpleNamespace(name="side", wait_stream=lambda s: self.log.append(f"side waits {s.name}"))

    @contextlib.contextmanager
    def stream(self, s):
        self.log.append(f"on {s.name}")
        yield
        self.log.append(f"off {s.name}")

    def CUDAGraph(self):  # noqa: N802
        return SimpleNamespace(work=None, replay=None)

    @contextlib.contextmanager
    def graph(self, g):
        self.log.append("capture")
        self.capturing = g
        yield
        self.capturing = None
        g.replay = g.work

    def device(self, d):
        return contextlib.nullcontext()


def test_graph_cache_captures_once_per_shape_and_stage_and_copies_in_and_out():
    log: list = []
    cuda = _FakeCuda(log)
    fake = SimpleNamespace(cuda=cuda, float32=torch.float32, empty_like=torch.empty_like, full=torch.full)

    def net(x, s, k):
        log.append("net")
        out = x * s[:, None, None, None] + k
        g = cuda.capturing
        if g is not None:
            g.work = lambda: out.copy_(x * s[:, None, None, None] + k)
        return out

    cache = GraphCache(fake, net, SimpleNamespace(type="cuda"), warmup=2)
    x1, x2 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    first = cache.run(x1, 0.5, 0)
    assert log == ["side waits current", "on side", "net", "net", "off side", "current waits side", "capture", "net"]
    second = cache.run(x2, 2.0, 0)  # the same key: a replay, new input and sigma
    torch.testing.assert_close(first, x1 * 0.5)  # the earlier result is a copy, not the graph's buffer
    torch.testing.assert_close(second, x2 * 2.0)
    torch.testing.assert_close(cache.run(x1, 1.0, 1), x1 + 1)  # another stage: another graph
    torch.testing.assert_close(cache.run(x1[:1], 1.0, 1), x1[:1] + 1)  # another shape: another graph
    assert (cache.captures, cache.replays) == (3, 4)
    with pytest.raises(ValueError, match="CUDA"):
        GraphCache(fake, net, torch.device("cpu"))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="inductor's CPU code needs a C++ compiler (checked on Linux)")
def test_compiled_solve_matches_eager(tiny_packages):
    """torch.compile (inductor) on the CPU: about 60 s cold (it compiles C++ per stage), a few
    seconds with inductor's on-disk cache warm."""
    _, pkg = tiny_packages["shared"]
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
    op = make_operator("sr", (32, 32), factor=2)
    y = op.measure(x, 0.05, seed=0)
    want = Solver.load(pkg, backend="torch").solve(y, op, steps=3, seed=1)
    solver = Solver.load(pkg, backend="torch", compile=True)
    assert "compiled" in solver.backend_name
    assert rel_err(solver.solve(y, op, steps=3, seed=1).images, want.images) < 1e-5


# -- on CUDA (the lent GPU machine) --------------------------------------------------------------


def _cuda_solver(path, **options):
    pytest.importorskip("cupy", reason="device='cuda' holds the solver's arrays in CuPy (the gpu extra)")
    return Solver.load(path, backend="torch", device="cuda", **options)


@CUDA
def test_cuda_graphs_and_fp16_network_calls_match_eager_fp32(with_weights):
    path, _ = with_weights
    import cupy as cp

    eager = _cuda_solver(path).backend
    x = cp.asarray(np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32))
    cases = [
        ({"cuda_graphs": True}, 1e-5),
        ({"precision": "fp16"}, 5e-3),
        ({"precision": "fp16", "cuda_graphs": True}, 5e-3),
    ]
    for options, tol in cases:
        backend = _cuda_solver(path, **options).backend
        for k in range(eager.stages):
            for sigma in (80.0, 1.0, 0.01):
                want = cp.asnumpy(eager.regularize(x * max(sigma, 0.5), sigma, k))
                got = cp.asnumpy(backend.regularize(x * max(sigma, 0.5), sigma, k))
                assert rel_err(got, want) < tol, (options, k, sigma)
        if options.get("cuda_graphs"):
            assert backend._graphs.captures == eager.stages  # one per stage at this shape, then replays
            assert backend._graphs.replays == 3 * eager.stages


def _cuda_solves(path, batch: int, steps: int, variants: list[dict]):
    """A 64 px blur solved on CUDA by the eager fp32 backend and by each variant's options:
    ``(eager images, [each variant's Solution])``, the images as numpy."""
    import cupy as cp

    y, op = _blur_problem(batch=batch, size=64)
    y = cp.asarray(y)
    want = cp.asnumpy(_cuda_solver(path).solve(y, op, steps=steps, seed=1).images)
    return want, [_cuda_solver(path, **options).solve(y, op, steps=steps, seed=1) for options in variants]


@CUDA
def test_cuda_solve_with_graphs_and_fp16_matches_eager_fp32(with_weights):
    import cupy as cp

    variants = [({"cuda_graphs": True}, 1e-5), ({"precision": "fp16", "cuda_graphs": True}, 1e-2)]
    want, solved = _cuda_solves(with_weights[0], 2, 6, [options for options, _ in variants])
    for (options, tol), got in zip(variants, solved):
        assert isinstance(got.images, cp.ndarray) and rel_err(cp.asnumpy(got.images), want) < tol, options


@pytest.mark.slow
@CUDA
def test_cuda_compile_with_graphs_matches_eager(with_weights):
    """torch.compile's code captured in CUDA graphs (a minute or more cold: one compile per stage)."""
    import cupy as cp

    want, (got,) = _cuda_solves(with_weights[0], 1, 2, [{"compile": True, "cuda_graphs": True}])
    assert rel_err(cp.asnumpy(got.images), want) < 1e-4


# -- bench/gpu_latency.py (the GPU session's timings; its dry run: bench/gpu_session.sh) ------------


def test_gpu_latency_script_shows_help_and_sizes_its_dry_run():
    import importlib.util
    import subprocess

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_latency.py"
    spec = importlib.util.spec_from_file_location("bench_gpu_latency", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main) and module.__doc__
    dry, gpu = module.parse_args(["--device", "cpu"]), module.parse_args([])
    assert (dry.sizes, dry.batches, dry.repeats) == ([16], [1, 2], 1)
    assert (gpu.sizes, gpu.batches, gpu.mri_size, gpu.coils) == ([64, 256], [1, 8], 256, 15)
    assert set(gpu.variants) == {"fp32", "fp16", "fp16+graphs"}
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "bench/gpu_latency.py" in done.stdout, done.stderr


@pytest.mark.parametrize("name", ["image-small", "mri-small"])
def test_the_bundled_packages_load_on_the_torch_backend(name):
    """Both bundled packages ship fp16 torch weights: the torch backend (the GPU path where
    TensorRT and ONNX Runtime CUDA cannot be had) rebuilds their network and agrees with ONNX."""
    from diffunfold.package import ModelPackage

    pkg = ModelPackage.open(Path(__file__).resolve().parents[1] / "samples" / "models" / name)
    assert pkg.torch_weights_file == "model.safetensors"
    torch_be = Solver.load(pkg, backend="torch", threads=1).backend
    ort_be = Solver.load(pkg, backend="onnxruntime", threads=1).backend
    x = np.random.default_rng(0).standard_normal((1, pkg.space.model_channels, 32, 32)).astype(np.float32)
    a, b = torch_be.regularize(x, 0.5, 0), ort_be.regularize(x, 0.5, 0)
    assert np.max(np.abs(a - b)) / np.max(np.abs(b)) < 1e-4
