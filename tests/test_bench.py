"""The benchmarks (bench/): FLOP counts and floors, the end-to-end entry point, the Polygraphy check."""

import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the benchmarks build models with torch (the train extra)")
pytest.importorskip("onnx", reason="the benchmarks export packages (the export extra)")
pytestmark = pytest.mark.torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import flops  # noqa: E402
import machine  # noqa: E402
import matmul_rate  # noqa: E402
import polygraphy_compare  # noqa: E402
import run as bench_run  # noqa: E402
import weight_generators  # noqa: E402

from diffunfold.engines import GPUInfo  # noqa: E402


@pytest.fixture(scope="module")
def tiny_pkg(tmp_path_factory):
    return common.random_package("tiny", tmp_path_factory.mktemp("bench"))


# -- FLOPs and the floor ----------------------------------------------------------------------


def test_flops_are_positive_and_scale_with_pixels():
    f64 = flops.regularizer_flops("small", 64)
    f128 = flops.regularizer_flops("small", 128)
    assert f64["flops"] > 1e9 and f64["stages"] == 4 and f64["shared"] is True
    # convolutions are linear in the pixels, attention quadratic: a bit over 4x
    assert 4.0 <= f128["flops"] / f64["flops"] < 5.0
    assert f64["by_op"]["aten.convolution"] > 0.8 * f64["flops"]  # a convolutional network
    assert sum(f64["by_op"].values()) == f64["flops"]
    paper = flops.regularizer_flops("paper", 256)
    assert paper["flops"] > 5 * f128["flops"]  # each preset at its own size
    # (small at 256 would cost as much: its attention at 64x64 is quadratic in the pixels)
    assert paper["stages"] == 6 and not paper["shared"]
    assert paper["regularizer_parameters"] * 6 <= paper["parameters"]
    # FLOPs per image do not depend on the batch
    assert flops.regularizer_flops("tiny", 32, batch=3)["flops"] == 3 * flops.regularizer_flops("tiny", 32)["flops"]


def test_floor_is_flops_over_peak():
    peak = flops.Peak("test", "FP32", 2e12, "given")
    assert peak.floor(5e9) == pytest.approx(2.5e-3)
    assert flops.solve_flops(1e9, stages=4, steps=18, sampler="euler") == 72e9
    assert flops.solve_flops(1e9, stages=2, steps=18, sampler="heun") == 2 * 35e9
    rows = flops.case_rows(["tiny:32"], peak=peak)
    (row,) = rows
    assert row["gflop_per_solve"] == pytest.approx(row["gflop_per_call"] * row["K"] * 18)
    assert row["floor_s_per_solve"] == pytest.approx(row["gflop_per_solve"] * 1e9 / 2e12)
    given = flops.peak_for("cpu", override_gflops=500)
    assert given.flops == 500e9


def test_cpu_peak_from_lscpu_flags():
    cores = min(2, len(os.sched_getaffinity(0)))
    base = {"Core(s) per socket": "2", "Socket(s)": "1", "CPU max MHz": "3000.0"}
    assert flops.cpu_peak({**base, "Flags": "sse fma avx2 avx512f"}).flops == cores * 3e9 * 64
    assert flops.cpu_peak({**base, "Flags": "sse fma avx2"}).flops == cores * 3e9 * 32
    p = flops.cpu_peak({**base, "Flags": "sse sse2"})
    assert p.flops == cores * 3e9 * 8 and "8 FP32 FLOPs per cycle assumed" in p.source
    here = flops.cpu_peak()
    assert here.flops > 0 and "FLOP/cycle" in here.source


def test_cpu_peak_from_the_microarchitecture():
    """AVX-512 is not 64 FLOP/cycle everywhere: Zen 4 runs it as two 256-bit halves."""
    zen4 = flops.flops_per_cycle({"avx2", "fma", "avx512f"}, "AuthenticAMD", 0x19, 0x11, "AMD EPYC 9354")
    zen3 = flops.flops_per_cycle({"avx2", "fma"}, "AuthenticAMD", 0x19, 0x01, "AMD EPYC 7763")
    zen5 = flops.flops_per_cycle({"avx2", "fma", "avx512f"}, "AuthenticAMD", 0x1A, 0x02, "AMD EPYC")
    intel = flops.flops_per_cycle({"avx2", "fma", "avx512f"}, "GenuineIntel", 6, 143, "Intel Xeon")
    assert (zen4[0], zen3[0], zen5[0], intel[0]) == (32, 32, 64, 64)
    assert "two 256-bit halves" in zen4[1]


def test_matmul_rate_is_the_best_library_per_precision():
    """The floor's rate is the fastest GEMM at hand, not numpy's alone; bf16 skips ONNX Runtime."""
    fp32 = matmul_rate.measure("fp32", sizes=(128,), repeats=1)
    assert {"numpy", "torch", "onnxruntime"} <= set(fp32["per_library"])
    assert fp32["gflops"] == max(r[128] for r in fp32["per_library"].values()) > 0
    assert fp32["library"] in fp32["per_library"] and fp32["size"] == 128
    bf16 = matmul_rate.measure("bf16", sizes=(128,), repeats=1)
    assert "numpy" not in bf16["per_library"] and "onnxruntime" not in bf16["per_library"]
    assert bf16["skipped"]["onnxruntime"] == "no bf16 GEMM" and bf16["gflops"] > 0
    assert f"{fp32['gflops']:.0f} GFLOP/s ({fp32['library']}" in matmul_rate.describe(fp32)


def test_emulated_bf16_is_measured_at_the_smallest_size_only(monkeypatch):
    """Without native bf16, torch emulates it at ~1 GFLOP/s: n = 2048 would take minutes (it
    once timed the suite out), so only the first size is measured, and the result says why."""
    import diffunfold.hardware as hw

    monkeypatch.setattr(hw, "has_native_bf16", lambda flags=None: False)
    bf16 = matmul_rate.measure("bf16", sizes=(64, 4096), repeats=1)
    assert bf16["emulated"] and all(set(r) == {64} for r in bf16["per_library"].values())
    assert "emulated: this CPU has no native bf16" in matmul_rate.describe(bf16)
    monkeypatch.setattr(hw, "has_native_bf16", lambda flags=None: True)
    native = matmul_rate.measure("bf16", sizes=(64, 96), repeats=1)
    assert not native["emulated"] and {64, 96} == set(native["per_library"]["torch"])


def test_busy_runs_write_only_when_told_and_say_so(capsys):
    watch = machine.LoadWatch()
    load = watch.finish()
    assert load["other_processes_cores"] is not None and load["load_average_start"] is not None
    busy = {**load, "quiet": False}
    assert not machine.may_write(dict(busy), allow_busy=False)
    assert "no results written" in capsys.readouterr().out
    marked = dict(busy)
    assert machine.may_write(marked, allow_busy=True) and marked["recorded_busy"]
    assert machine.busy_banner(marked).startswith("**Measured on a busy machine")
    assert machine.busy_banner({**load, "quiet": True}) == ""


def test_quiet_is_judged_by_what_other_processes_use(monkeypatch):
    """A high load average left by an earlier run does not make an idle machine busy; one other
    process holding a core does, whatever the load average says."""
    import time

    monkeypatch.setattr(machine, "_own_cpu_s", lambda: 1.0)  # this process: fixed, so the fakes are exact
    monkeypatch.setattr(machine, "_load", lambda: 9.0)
    monkeypatch.setattr(machine, "_cpu_busy_s", lambda: 5.0)  # nobody else
    load = machine.LoadWatch(sample_s=0.05).finish()
    assert load["quiet"] and load["load_average_start"] == 9.0 and load["other_processes_cores"] == 0
    monkeypatch.setattr(machine, "_load", lambda: 0.0)
    monkeypatch.setattr(machine, "_cpu_busy_s", lambda: time.perf_counter())  # one core, all the time
    load = machine.LoadWatch(sample_s=0.05).finish()
    assert not load["quiet"] and load["other_processes_cores_before"] > 0.5
    assert "just before the run" in machine.describe_load(load)


def test_gpu_peaks_from_the_table():
    assert flops.gpu_peak("NVIDIA H100 80GB HBM3", "fp16").flops == pytest.approx(989.4e12)
    assert flops.gpu_peak("NVIDIA H100 PCIe", "fp16").flops == pytest.approx(756.5e12)
    assert flops.gpu_peak("NVIDIA H200", "fp32").flops == pytest.approx(66.9e12)
    assert flops.gpu_peak("NVIDIA L4", "fp16").flops == pytest.approx(121e12)
    assert flops.gpu_peak("NVIDIA L40S", "fp16") is None  # not the L4
    assert flops.peak_for("cuda", "tensorrt", "NVIDIA A100-SXM4-80GB").precision == "FP16"
    assert flops.peak_for("cuda", "onnxruntime", "NVIDIA A100-SXM4-80GB").flops == pytest.approx(19.5e12)
    assert flops.peak_for("cuda", "onnxruntime", "Some Future GPU") is None


def test_engine_target_for_a_gpu():
    assert common.target_for_gpu(GPUInfo("NVIDIA H100 80GB HBM3", "9.0")).name == "h100"
    assert common.target_for_gpu(GPUInfo("NVIDIA H200", "9.0")).name == "h200"
    assert common.target_for_gpu(GPUInfo("NVIDIA GeForce RTX 4090", "8.9")).name == "rtx4090"
    assert common.target_for_gpu(GPUInfo("Orin (nvgpu)", "8.7")).name == "jetson-orin"
    assert common.target_for_gpu(GPUInfo("Tesla T4", "7.5")) is None


# -- bench/run.py -----------------------------------------------------------------------------


def test_run_help_and_defaults(capsys):
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--help"])
    text = capsys.readouterr().out
    for option in ("--preset", "--size", "--batch", "--backends", "--device", "--repeats", "--task", "--out"):
        assert option in text
    cpu = bench_run.parse_args([])
    assert (cpu.preset, cpu.size, cpu.batch) == ("small", [64, 128, 256], [1, 4])
    gpu = bench_run.parse_args(["--device", "cuda"])
    assert (gpu.preset, gpu.size, gpu.batch) == ("paper", [256], [1, 8])


def test_run_writes_results_for_every_backend(tiny_pkg, tmp_path):
    """The tiny preset's random-weight package (exported by the fixture, as run.py does for
    --preset), 4 steps, 2 interleaved rounds: the JSON and Markdown hold the machine, the
    settings and a row per backend present with its ratio to the torch reference; a baseline
    package (here a copy of the same one) gets its own row and every row its ratio to it."""
    base = tmp_path / "before"
    shutil.copytree(tiny_pkg.path, base)
    threads = torch.get_num_threads()
    try:  # one thread: torch's thread pool stalls badly when another process holds the other cores
        assert (
            bench_run.main(
                [
                    "--package",
                    str(tiny_pkg.path),
                    "--size",
                    "32",
                    "--batch",
                    "1",
                    "2",
                    "--repeats",
                    "2",
                    "--call-repeats",
                    "1",
                    "--steps",
                    "4",
                    "--threads",
                    "1",
                    "--out",
                    str(tmp_path / "out"),
                    "--baseline-package",
                    str(base),
                    "--allow-busy",
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    (md,) = (tmp_path / "out").glob("*.md")
    (js,) = (tmp_path / "out").glob("*.json")
    assert md.stem == js.stem == machine.machine_slug(machine.machine_info())
    data = json.loads(js.read_text())
    m = data["machine"]
    assert m["cores"] == os.cpu_count() and m["cpu"] and m["python"] and m["numpy"] and m["onnxruntime"]
    s = data["settings"]
    assert s["model"] == str(tiny_pkg.path) and s["K"] == 2 and s["steps"] == 4 and s["sizes"] == [32]
    assert s["batches"] == [1, 2] and s["device"] == "cpu" and s["threads"] == 1
    assert "FP32 GEMM, measured" in s["peaks"]["onnxruntime"] and s["matmul"]["rates"]["fp32"]["gflops"] > 0
    if "openvino bf16" in s["peaks"]:  # bf16 rows are held to the bf16 rate
        assert "BF16 GEMM, measured" in s["peaks"]["openvino bf16"]
    assert "(1 core)" in s["matmul"]["nominal"] and "FLOP/cycle" in s["matmul"]["nominal"]  # printed beside it
    load = m["load"]
    assert {"load_average_start", "load_average_end", "other_processes_cores", "quiet"} <= set(load)
    res = data["results"]
    assert res["backends"]["tensorrt"] == "needs a CUDA device"  # absent here, with the reason
    variants = ("onnxruntime", "onnxruntime spinning", "openvino bf16", "openvino f32", "torch")
    present = [b for b in variants if res["backends"][b].startswith("ok")]
    assert "onnxruntime" in present and "onnxruntime OpenVINO EP" in res["backends"]
    for batch in (1, 2):
        rows = {r["backend"]: r for r in res["solve"] if r["batch"] == batch}
        assert set(rows) == {"torch reference", bench_run.BASELINE_PACKAGE, *present}
        before = rows[bench_run.BASELINE_PACKAGE]
        assert before["vs_base_pkg"] == 1.0 and "max_rel_diff" not in before  # another network: no output check
        assert before["backend_detail"].startswith("onnxruntime")
        ref = rows["torch reference"]["s_per_image"]
        for name in present:
            r = rows[name]
            assert r["mode"] == ("latency" if batch == 1 else "throughput")
            assert r["s_per_image"] > 0 and r["images_per_s"] == pytest.approx(1 / r["s_per_image"])
            assert r["network_s"] + r["physics_s"] + r["sampler_s"] == pytest.approx(r["s_per_image"], rel=1e-6)
            assert r["ratio"] == pytest.approx(ref / r["s_per_image"])
            assert r["max_rel_diff"] < (5e-2 if "bf16" in name else 1e-3)  # the same restoration (test_openvino.py)
            assert r["vs_ort"] == pytest.approx(r["s_per_image"] / rows["onnxruntime"]["s_per_image"])
            assert r["vs_base_pkg"] == pytest.approx(r["s_per_image"] / before["s_per_image"])
            assert r["peak_mb"] > 0 and r["peak_above_mb"] >= 0
            assert r["tiling"] == "untiled"  # 32 px: within one tile, as the reference runs
            assert r["nfe"] == 4 and r["network_calls"] == 4 * 2  # NFE x K, the batch in one call
            assert 0 < r["network_efficiency"] and r["floor_network_s"] > 0
    for name in present:
        (call,) = [r for r in res["regularizer_call"] if r["backend"] == name]
        f = flops.regularizer_flops("tiny", 32)["flops"]
        assert call["gflop_per_call"] == pytest.approx(f / 1e9)
        assert call["floor_ms"] == pytest.approx(1e3 * f / (call["peak_tflops"] * 1e12))
        assert call["efficiency"] == pytest.approx(call["floor_ms"] / call["ms_per_call"])
    text = md.read_text()
    assert "torch reference" in text and "onnxruntime" in text and "needs a CUDA device" in text
    assert "| size | batch | mode | backend | regulariser | s/image | vs ORT | vs base pkg |" in text
    assert f"on `{base}`" in text and "interleaved rounds" in text and s["baseline_package"] == str(base)


def test_run_without_anything_to_time_writes_nothing(tiny_pkg, tmp_path, capsys):
    from diffunfold.runtime.backends import cuda_available

    if cuda_available():
        pytest.skip("a CUDA device is visible: this test covers machines without one")
    assert (
        bench_run.main(
            [
                "--package",
                str(tiny_pkg.path),
                "--device",
                "cuda",
                "--size",
                "32",
                "--batch",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "skipped onnxruntime: no CUDA device" in out and "nothing could be timed on cuda" in out
    assert not list(tmp_path.iterdir())


# -- bench/polygraphy_compare.py --------------------------------------------------------------


def test_polygraphy_inputs(tiny_pkg):
    feeds = polygraphy_compare.feeds_for(tiny_pkg, batch=3, size=32, count=4)
    assert len(feeds) == 4
    assert np.all(feeds[0]["sigma"] == np.float32(80.0)) and np.all(feeds[1]["sigma"] == np.float32(0.002))
    for f in feeds:
        assert f["x"].shape == (3, 3, 32, 32) and f["x"].dtype == np.float32
        assert np.all((f["sigma"] >= np.float32(0.002)) & (f["sigma"] <= np.float32(80)))
        assert f["stage"].dtype == np.int64 and np.all((0 <= f["stage"]) & (f["stage"] < tiny_pkg.stages))
    assert 0.3 < float(np.std(feeds[1]["x"])) < 0.7  # at sigma_min: the image part, N(0, 0.5^2)


def test_polygraphy_runs_onnxruntime_alone_here(tiny_pkg, tmp_path):
    pytest.importorskip("polygraphy", reason="polygraphy is not installed (the dev extra)")
    if common.tensorrt_version() is not None:
        pytest.skip("TensorRT is installed here: this test covers the machines without it")
    out = tmp_path / "pg.json"
    rc = polygraphy_compare.main(
        [
            str(tiny_pkg.path),
            "--size",
            "32",
            "--batch",
            "1",
            "2",
            "--inputs",
            "2",
            "--iterations",
            "1",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["passed"] and data["settings"]["compared"] == "onnxrt alone"
    assert "TensorRT is not installed" in data["settings"]["tensorrt"]
    assert [(r["batch"], r["size"]) for r in data["rows"]] == [(1, 32), (2, 32)]
    for r in data["rows"]:
        assert r["onnxrt_finite"] and 0 < r["onnxrt_max_abs_output"] < 1e3 and r["onnxrt_ms"] > 0
        assert "trt_fp16_ms" not in r and math.isfinite(r["onnxrt_ms"])


def test_variants_from_scratch_compare_attention_levels(tmp_path):
    """Architecture variants train from fresh weights at an equal budget and land in one table."""
    import variants

    argv = [
        "--from-scratch",
        "--preset",
        "tiny",
        "--variants",
        "attention-h4",
        "attention-h8",
        "--steps",
        "2",
        "--noise",
        "0.0",
        "--sample-steps",
        "2",
        "--threads",
        "1",
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path),
        "--name",
        "levels",
        "--quiet",
        "--set",
        "model.unet.channel_mult=[1, 1, 1, 1]",
        "--set",
        "val.images=1",
    ]
    assert variants.main(argv) == 0
    data = json.loads((tmp_path / "levels.json").read_text())
    assert data["init"] == "from scratch" and set(data["results"]) == {"attention-h4", "attention-h8"}
    for name, levels in (("attention-h4", "[2, 3]"), ("attention-h8", "[3]")):
        entry = data["results"][name]
        assert f"model.unet.attention_levels={levels}" in entry["command"] and "init_from" not in entry["command"]
        assert entry["rows"] and all(math.isfinite(r["psnr_model"]) for r in entry["rows"])
    text = (tmp_path / "levels.md").read_text()
    assert "steps from scratch" in text and "| attention-h8 |" in text
    with pytest.raises(SystemExit):  # neither --init nor --from-scratch
        variants.main(["--variants", "attention-h4"])


def test_physics_ops_times_the_mri_normal_operator_against_the_literal(tmp_path, capsys):
    import physics_ops

    assert (
        physics_ops.main(
            [
                "--size",
                "32",
                "--batch",
                "1",
                "--repeats",
                "1",
                "--mri-sizes",
                "32",
                "--rounds",
                "1",
                "--out",
                str(tmp_path),
                "--allow-busy",
            ]
        )
        == 0
    )
    (js,) = tmp_path.glob("physics_ops-*.json")
    mri = json.loads(js.read_text())["results"]["mri_normal"]
    assert {r["mask"] for r in mri} == {"gaussian1d 4x", "uniform1d 8x", "gaussian2d 8x"}
    for r in mri:
        assert r["grad_ratio"] > 0 and r["prox_ratio"] > 0
        assert math.isclose(r["prox_ratio"], r["prox_normal_ms"] / r["prox_literal_ms"], rel_tol=1e-6)
    assert "MRI normal operator" in capsys.readouterr().out


def test_trajectory_scores_every_step_both_ways(tiny_pkg):
    """One row per sampler step, sigma falling, both PSNRs finite (random weights: values only)."""
    import trajectory

    from diffunfold.physics import make_operator
    from diffunfold.runtime import Solver

    solver = Solver.load(tiny_pkg.path, backend="onnxruntime")
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
    op = make_operator("gaussian_blur", (32, 32), sigma=2.0)
    y = np.asarray(op.measure(x, [0.05, 0.05], seed=[0, 1])).astype(np.float32)
    rows = trajectory.trajectory(solver, x, y, op, 0.05, steps=4, seed=0)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(a["sigma"] > b["sigma"] for a, b in zip(rows, rows[1:]))
    assert all(math.isfinite(r["psnr_trajectory"]) and math.isfinite(r["psnr_one_shot"]) for r in rows)


def test_trajectory_takes_any_image_task_of_the_harness(tiny_pkg, tmp_path, capsys):
    """--task builds the measurement as bench/quality.py does and names it in the table."""
    import trajectory
    from PIL import Image

    photos = tmp_path / "held-out"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    assert (
        trajectory.main(
            [
                str(tiny_pkg.path),
                "--photos",
                str(photos),
                "--task",
                "sr_x8",
                "--size",
                "32",
                "--images",
                "2",
                "--steps",
                "3",
                "--no-write",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "SR x8 (box) at sigma_y = 0.05, 2 held-out photos at 32 px" in out
    assert out.count(f"| {Path(tiny_pkg.path).name} | ") == 3  # one row per step
    with pytest.raises(SystemExit):
        trajectory.main([str(tiny_pkg.path), "--photos", str(photos), "--task", "mri_uniform1d_4x", "--no-write"])


def test_weight_generator_variants_replace_only_what_they_say(tmp_path):
    """bench/weight_generators.py: the fixed table is tau = gamma = 1 at every sigma and stage,
    the scaled ones change gamma only."""
    learned = {80.0: ([0.5, 0.7], [2.0, 0.1]), 0.5: ([1.2, 0.3], [0.04, 8.0])}
    v = weight_generators.variants(learned)
    assert v["learned"] == learned
    assert all(t == [1.0, 1.0] and g == [1.0, 1.0] for t, g in v["tau = gamma = 1"].values())
    assert v["learned, gamma x 4"][0.5] == ([1.2, 0.3], [0.16, 32.0])
    assert v["learned, gamma / 4"][80.0] == ([0.5, 0.7], [0.5, 0.025])


def test_group_norm_bench_times_both_forms_and_checks_them(tiny_pkg, tmp_path):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    import group_norm

    assert (
        group_norm.main(
            [
                "--package",
                str(tiny_pkg.path),
                "--size",
                "32",
                "--rounds",
                "1",
                "--calls",
                "1",
                "--out",
                str(tmp_path),
                "--allow-busy",
            ]
        )
        == 0
    )
    (js,) = tmp_path.glob("group_norm-*.json")
    rows = json.loads(js.read_text())["results"]
    assert {(r["backend"], r["group_norm"]) for r in rows} == {
        (b, f) for b in ("openvino bf16", "openvino f32", "onnxruntime") for f in ("exported", "reduce")
    }
    for r in rows:
        assert r["ms_per_call"] > 0 and math.isfinite(r["max_rel_diff"])
        if r["backend"] != "openvino bf16":  # float32: the same function
            assert r["max_rel_diff"] < 1e-5


def test_backend_quality_scores_every_backend_and_names_its_data(tmp_path):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    import argparse

    import backend_quality as bq

    args = argparse.Namespace(
        image_package=str(bq.DEFAULT_IMAGE_PACKAGE),
        mri_package=str(bq.DEFAULT_MRI_PACKAGE),
        images=1,
        size=32,
        steps=2,
        noise=0.05,
        mri_noise=0.0,
        seed=0,
        data=str(tmp_path / "none"),
    )
    rows, sources = bq.run(args)
    assert {r["backend"] for r in rows} == {"onnxruntime f32", "openvino bf16", "openvino f32"}
    assert {r["task"] for r in rows} == {t.key for t in bq.TASKS}
    assert all(math.isfinite(r["psnr"]) and r["max_abs_diff_db"] >= 0 for r in rows)
    assert all(r["mean_diff_db"] == 0 for r in rows if r["backend"] == "onnxruntime f32")  # the reference
    assert "scikit-image" in sources[0] and "phantoms" in sources[1]  # no `diffunfold data` there: the fallbacks


def test_data_pipeline_times_both_variants_on_the_same_batches(tmp_path):
    import data_pipeline
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(90, 120), (80, 80), (150, 100)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    # the two variants draw identical batches: only the decoding differs
    plain, cached = (data_pipeline.batches(str(photos), 2, cache) for cache in (False, True))
    for step in (0, 3):
        np.testing.assert_array_equal(plain[step]["x"], cached[step]["x"])
    out = tmp_path / "results"
    assert (
        data_pipeline.main(
            [str(photos), "--batch", "2", "--rounds", "2", "--steps", "1", "--out", str(out), "--allow-busy"]
        )
        == 0
    )
    (js,) = out.glob("data_pipeline-*.json")
    rows = json.loads(js.read_text())["results"]
    assert [r["variant"] for r in rows] == list(data_pipeline.VARIANTS)
    assert all(r["s_per_image"] > 0 for r in rows) and rows[0]["ratio"] == 1.0


# -- bench/latency.py ---------------------------------------------------------------------------


def test_latency_compares_the_schedules_and_records_the_machine_rate(tmp_path, monkeypatch):
    """Every variant timed with its network calls (the fast schedule's per-level stages, not
    steps x K), the GEMM rate before and after, and the quality part's cells."""
    import latency
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        smooth = np.cumsum(np.cumsum(rng.standard_normal((48, 48, 3)), 0), 1)
        smooth = (smooth - smooth.min()) / np.ptp(smooth)
        Image.fromarray((255 * smooth).astype(np.uint8)).save(photos / f"p{i}.png")
    real = matmul_rate.measure
    monkeypatch.setattr(latency.matmul_rate, "measure", lambda p, sizes, repeats: real(p, (64,), 1))
    package = BENCH.parent / "samples" / "models" / "image-small"
    args = ["--package", str(package), "--photos", str(photos), "--sizes", "32", "--repeats", "1"]
    args += ["--quality-size", "32", "--images", "1"]
    args += ["--tasks", "gaussian_blur", "--noise", "0.01", "--backend", "onnxruntime", "--out", str(tmp_path)]
    assert latency.main([*args, "--allow-busy"]) == 0
    (result,) = tmp_path.glob("latency-*.json")
    got = json.loads(result.read_text())["results"]
    calls = {r["variant"]: r["network_calls"] for r in got["timing"]}
    # sigma_y 0.01: the fast schedule's stages for noisy measurements (2-4-4-4-2-2)
    assert calls == {"full, 128 tiles": 72, "fast, whole": 18, "fast, 128 tiles": 18, "fast, auto": 18}
    assert len(got["gemm_rates"]) == 2 and all(r["gflops"] > 0 for r in got["gemm_rates"])
    (cell,) = got["quality"]
    assert cell["task"] == "gaussian_blur" and all(math.isfinite(cell[k]) for k in ("full, 128 tiles", "fast, auto"))


def test_worker_threads_bench_times_steps_past_the_start_and_builds_valid_runs(tmp_path, capsys):
    import worker_threads

    from diffunfold.training.config import load_config

    log = tmp_path / "log.csv"
    log.write_text("step,loss,elapsed_s\n1,0,10.0\n2,0,14.0\n3,0,16.0\n4,0,18.5\n5,0,20.5\n")
    assert worker_threads.seconds_per_step(log) == 2.0  # steps 3, 4, 5 took 2.0, 2.5, 2.0
    for supervised in (True, False):
        sets = worker_threads.train_settings(tmp_path / "mri", 8, supervised)[1::2]
        cfg = load_config("mri-small", sets + ["data.worker_threads=0"])
        assert cfg.data.workers == 1 and cfg.data.worker_threads == 0 and cfg.val.images == 0
        assert cfg.train.supervision == ("supervised" if supervised else "ssdu")
    with pytest.raises(SystemExit):
        worker_threads.main(["--steps", "3"])
    assert "at least 4" in capsys.readouterr().err
