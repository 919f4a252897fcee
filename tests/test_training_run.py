"""Training runs: config files, batches, the loss going down, checkpoints, exact resume after a
kill, and a two-process DistributedDataParallel run on gloo."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training side needs torch (the train extra)")
pytestmark = pytest.mark.torch

from safetensors.torch import load_file  # noqa: E402

from diffunfold.errors import InputError  # noqa: E402
from diffunfold.training import checkpoint as ckpt  # noqa: E402
from diffunfold.training.config import load_config  # noqa: E402
from diffunfold.training.data import TrainingBatches  # noqa: E402
from diffunfold.training.loss import unfolding_loss  # noqa: E402
from diffunfold.training.model import DiffUnfolding  # noqa: E402
from diffunfold.training.sampler import to_tensor  # noqa: E402
from diffunfold.training.trainer import train  # noqa: E402

# A small, fast run: tiny preset at 32 px, batch 2, one thread (bitwise-reproducible on a CPU).
FAST = [
    "train.batch_size=2",
    "train.threads=1",
    "train.log_every=1",
    "val.steps=2",
    "val.images=1",
    "train.val_every=0",
]


def fast_config(*extra):
    return load_config("tiny", FAST + list(extra))


def run_cli(args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "diffunfold", *args], capture_output=True, text=True, env=env, timeout=240, **kw
    )


# -- configuration ---------------------------------------------------------------------------


def test_presets_load_and_overrides_apply():
    cfg = load_config("small", ["train.steps=7", "model.unet.channels=16", 'data.source="bundled"'])
    assert cfg.train.steps == 7 and cfg.model.unet.channels == 16
    assert cfg.model.stages == 4 and cfg.data.size == 64


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="unknown setting"):
        load_config("tiny", ["train.stepz=3"])
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(InputError, match="needs data.path"):
        load_config("tiny", ['data.source="folder"'])
    with pytest.raises(InputError, match="model.data"):
        load_config("tiny", ['data.source="phantom"'])
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 3")
    with pytest.raises(InputError, match="TOML"):
        load_config(bad)


def test_task_mix_settings_reach_the_sampler():
    """Inpainting's missing range and the SR factors are settings; a task or factor named twice
    is drawn about twice as often; a range outside (0, 1) is refused with the setting's name."""
    cfg = fast_config(
        "data.size=64",
        'data.tasks=["sr", "inpainting", "inpainting"]',
        "data.inpainting_missing=[0.5, 0.8]",
        "data.sr_factors=[4, 8, 8]",
    )
    sampler = TrainingBatches(cfg).tasks
    assert sampler.sr_factors_in_use == (4, 8, 8)
    rng = np.random.default_rng(0)
    draws = [sampler.sample(rng) for _ in range(600)]
    inpaint = [d.params["missing"] for d in draws if d.task == "inpainting"]
    factors = [d.params["factor"] for d in draws if d.task == "sr"]
    assert 340 < len(inpaint) < 460 and 0.5 <= min(inpaint) and max(inpaint) <= 0.8
    assert 0.55 < factors.count(8) / len(factors) < 0.78
    assert cfg.to_dict()["data"]["inpainting_missing"] == (0.5, 0.8)
    with pytest.raises(InputError, match="data.inpainting_missing"):
        fast_config("data.inpainting_missing=[0.5, 1.0]")
    with pytest.raises(InputError, match="data.sr_factors"):
        fast_config("data.sr_factors=[1]")
    with pytest.raises(InputError, match="data.whole_fraction"):
        fast_config("data.whole_fraction=-0.1")


def test_yaml_config(tmp_path):
    pytest.importorskip("yaml")
    p = tmp_path / "run.yaml"
    p.write_text(
        "model:\n  stages: 2\n  shared: true\n  unet: {channels: 8, channel_mult: [1, 2], num_blocks: 1, "
        "attention_levels: [1], head_channels: 8}\ntrain:\n  steps: 3\n"
    )
    cfg = load_config(p)
    assert cfg.model.stages == 2 and cfg.train.steps == 3 and cfg.name == "run"


# -- batches ---------------------------------------------------------------------------------


def test_batches_are_a_function_of_step_and_split_across_processes():
    cfg = fast_config("train.batch_size=4")
    one = TrainingBatches(cfg)[3]
    again = TrainingBatches(cfg)[3]
    halves = [TrainingBatches(cfg, rank=r, world=2)[3] for r in (0, 1)]
    np.testing.assert_array_equal(one["x"], again["x"])
    for key in ("x", "y", "sigma", "noise"):
        np.testing.assert_array_equal(one[key], np.concatenate([h[key] for h in halves]))
    assert one["task"] == halves[1]["task"]
    assert not np.array_equal(one["x"], TrainingBatches(cfg)[4]["x"])
    # resuming at step 3 gives the same item 0 as step 3 of a run from scratch
    np.testing.assert_array_equal(TrainingBatches(cfg, start=3)[0]["noise"], one["noise"])
    with pytest.raises(InputError, match="divide"):
        TrainingBatches(cfg, rank=0, world=3)


def test_mri_batches_from_the_phantom_generator():
    cfg = load_config("mri-small", ["train.batch_size=2", "data.size=32"])
    b = TrainingBatches(cfg)[0]
    assert b["x"].dtype == np.complex64 and b["x"].shape == (2, 1, 32, 32)
    assert b["y"].shape == (2, 15, 32, 32) and b["noise"].shape == (2, 2, 32, 32)
    assert b["task"] == "mri" and np.all(b["sigma_y"] >= 0)


# -- learning --------------------------------------------------------------------------------


def _eval_loss(model, batches):
    total = 0.0
    with torch.no_grad():
        for b in batches:
            x = model.space.to_model(to_tensor(b["x"], "cpu"))
            total += unfolding_loss(
                model,
                x,
                to_tensor(b["sigma"], "cpu"),
                to_tensor(b["noise"], "cpu"),
                to_tensor(b["y"], "cpu"),
                b["operator"],
            ).loss.item()
    return total / len(batches)


def test_loss_decreases_on_the_tiny_preset(tmp_path):
    cfg = fast_config("train.steps=60", "train.batch_size=4", "train.checkpoint_every=0")
    held = [TrainingBatches(load_config("tiny", FAST + ["train.seed=99", "train.batch_size=8"]))[i] for i in range(6)]
    torch.manual_seed(cfg.train.seed)
    before = _eval_loss(DiffUnfolding(cfg.model).eval(), held)
    summary = train(cfg, out_dir=tmp_path, progress=False)
    model, _ = ckpt.load_model(summary["checkpoint"], weights="model")
    after = _eval_loss(model, held)
    assert np.isfinite(after) and after < 0.9 * before, (before, after)  # measured: 0.844 -> 0.696
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss") and len(log) == 61
    assert (tmp_path / "val.csv").exists() and json.loads((tmp_path / "config.json").read_text())["name"] == "tiny"


# -- checkpoints -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(fast_config("train.steps=4", "train.checkpoint_every=2"), out_dir=out, progress=False)
    return out


def test_checkpoint_round_trip(short_run):
    path = ckpt.latest_checkpoint(short_run / "checkpoints")
    assert path.name == "ckpt-00000004.json"
    meta = json.loads(path.read_text())
    assert meta["step"] == 4 and meta["sha256"] == ckpt.sha256_file(path.with_suffix(".safetensors"))
    groups = meta["optimizer"]["param_groups"]  # networks, then the weight generators
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0] and len(groups[1]["params"]) == 6
    model, meta2 = ckpt.load_model(short_run)
    raw, _ = ckpt.load_model(path, weights="model")
    tensors = load_file(path.with_suffix(".safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, tensors[f"ema/module.{k}"])
    for k, v in raw.state_dict().items():
        assert torch.equal(v, tensors[f"model/{k}"])
    assert any(not torch.equal(tensors[f"ema/module.{k}"], tensors[f"model/{k}"]) for k in raw.state_dict())


def test_a_tampered_or_incomplete_checkpoint_is_refused(short_run, tmp_path):
    import shutil

    src = ckpt.latest_checkpoint(short_run / "checkpoints")
    for f in (src, src.with_suffix(".safetensors")):
        shutil.copy(f, tmp_path / f.name)
    weights = tmp_path / src.with_suffix(".safetensors").name
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum"):
        ckpt.load_model(tmp_path)
    (tmp_path / src.name).unlink()
    assert ckpt.latest_checkpoint(tmp_path) is None  # no JSON: the write never completed
    with pytest.raises(InputError, match="no complete checkpoint"):
        ckpt.load_model(tmp_path)


def test_an_interrupted_write_leaves_the_previous_checkpoint(short_run, tmp_path, monkeypatch):
    import shutil

    d = tmp_path / "checkpoints"
    shutil.copytree(short_run / "checkpoints", d)
    model, meta = ckpt.load_model(d, weights="model")
    from torch.optim.swa_utils import AveragedModel

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt  # the process is stopped in the middle of the write

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(d, 6, model, AveragedModel(model), torch.optim.Adam(model.parameters()), {})
    assert ckpt.latest_checkpoint(d).name == "ckpt-00000004.json"
    assert not any(p.name.endswith(".tmp") for p in d.iterdir())
    assert not (d / "ckpt-00000006.safetensors").exists()
    ckpt.load_model(d)


def test_resume_refusals(short_run, tmp_path):
    with pytest.raises(InputError, match="--resume"):
        train(fast_config("train.steps=6"), out_dir=short_run, progress=False)
    with pytest.raises(InputError, match="no complete checkpoint"):
        train(fast_config("train.steps=6"), out_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(InputError, match="already at step"):
        train(fast_config("train.steps=4"), out_dir=short_run, resume=True, progress=False)


def _final_tensors(run_dir):
    return load_file(ckpt.latest_checkpoint(Path(run_dir) / "checkpoints").with_suffix(".safetensors"))


def test_resume_after_a_kill_reaches_the_same_weights(tmp_path):
    args = [
        "train",
        "--config",
        "tiny",
        "--quiet",
        *sum((["--set", s] for s in FAST), []),
        "--set",
        "train.steps=10",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.keep_checkpoints=0",
    ]
    straight = run_cli(args + ["--out", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr

    killed_dir = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffunfold", *args, "--out", str(killed_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 180
    while time.time() < deadline and not (killed_dir / "checkpoints" / "ckpt-00000004.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = ckpt.latest_checkpoint(killed_dir / "checkpoints")
    assert done is not None and json.loads(done.read_text())["step"] < 10, "the run was not interrupted"

    resumed = run_cli(args + ["--out", str(killed_dir), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = _final_tensors(tmp_path / "straight"), _final_tensors(killed_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = (killed_dir / "log.csv").read_text().splitlines()
    assert rows[-1].split(",")[0] == "10"


def test_two_process_ddp_matches_one_process(tmp_path):
    sets = [*FAST, "train.steps=3", "train.batch_size=4", "train.checkpoint_every=0"]
    flat = sum((["--set", s] for s in sets), [])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "diffunfold",
            "train",
            "--config",
            "tiny",
            "--quiet",
            *flat,
            "--out",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    meta = json.loads(ckpt.latest_checkpoint(tmp_path / "ddp" / "checkpoints").read_text())
    assert meta["world_size"] == 2
    single = run_cli(["train", "--config", "tiny", "--quiet", *flat, "--out", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr

    # The same global batches: the global gradient norm (logged after the all-reduce) agrees.
    def grad_norms(run):
        return [r.split(",")[6] for r in (tmp_path / run / "log.csv").read_text().splitlines()[1:]]

    assert grad_norms("ddp") == grad_norms("one")
    # Weights agree to a fraction of one Adam step (lr = 2e-4): Adam turns the rounding
    # differences of summing gradients in another order into small update differences.
    a, b = _final_tensors(tmp_path / "ddp"), _final_tensors(tmp_path / "one")
    for k in a:
        if k.startswith("model/"):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=5e-5, msg=k)


def test_cli_evaluate_prints_the_table(short_run):
    r = run_cli(
        [
            "evaluate",
            str(short_run),
            "--task",
            "sr",
            "factor=4",
            "--task",
            "gaussian_blur",
            "sigma=1.5",
            "--steps",
            "2",
            "--images",
            "1",
            "--quiet",
        ]
    )
    assert r.returncode == 0, r.stderr
    assert "sr(factor=4)" in r.stdout and "Wiener" in r.stdout and "model PSNR" in r.stdout


def test_attention_at_high_resolution_is_flagged():
    with pytest.warns(UserWarning, match="attention"):
        load_config("small", ["model.unet.attention_levels=[0, 3]"])


def test_learning_rate_warms_up_holds_then_decays_to_zero():
    from diffunfold.training.config import TrainSettings
    from diffunfold.training.trainer import learning_rate

    t = TrainSettings(steps=100, lr=1e-3, warmup_steps=10, decay_steps=40)
    lrs = [learning_rate(t, s) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(v == pytest.approx(1e-3) for v in lrs[10:60])
    tail = lrs[60:]
    assert all(a > b for a, b in zip(tail, tail[1:])) and 0 < tail[-1] < 1e-5
    assert [learning_rate(TrainSettings(steps=100, lr=1e-3), s) for s in (0, 99)] == [1e-3, 1e-3]


def test_decay_longer_than_the_run_covers_the_run_and_negative_is_refused():
    from diffunfold.errors import InputError
    from diffunfold.training.config import TrainConfig, TrainSettings
    from diffunfold.training.trainer import learning_rate

    t = TrainSettings(steps=10, lr=1.0, decay_steps=1500)  # e.g. --steps 10 on the small preset
    lrs = [learning_rate(t, s) for s in range(10)]
    assert 0.95 < lrs[0] < 1 and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.05
    with pytest.raises(InputError, match="decay_steps"):
        TrainConfig.from_dict({"train": {"steps": 10, "decay_steps": -1}})


def test_a_step_with_a_non_finite_loss_is_skipped_and_many_stop_the_run(tmp_path, monkeypatch):
    """One bad batch makes no update (logged in skipped_steps.csv); five in a row end the run
    with a message, since then the model itself has gone bad."""
    import diffunfold.training.loss as loss_module
    from diffunfold.errors import DiffUnfoldError

    real = loss_module.unfolding_loss
    bad_steps = {2}

    def flaky(model, x, sigma, *args, **kwargs):
        terms = real(model, x, sigma, *args, **kwargs)
        if flaky.calls in bad_steps:
            terms.loss = terms.loss * float("nan")
        flaky.calls += 1
        return terms

    flaky.calls = 0
    monkeypatch.setattr(loss_module, "unfolding_loss", flaky)
    summary = train(fast_config("train.steps=4"), out_dir=tmp_path / "one", progress=False)
    assert summary["steps"] == 4 and math.isfinite(summary["loss"])
    assert (tmp_path / "one" / "skipped_steps.csv").read_text().startswith("2,nan")

    flaky.calls, bad_steps = 0, set(range(100))
    monkeypatch.setattr(loss_module, "unfolding_loss", flaky)
    with pytest.raises(DiffUnfoldError, match="not finite at 5 steps in a row"):
        train(fast_config("train.steps=8"), out_dir=tmp_path / "all", progress=False)


def test_batch_workers_are_held_to_their_blas_threads():
    """Each DataLoader worker runs under ``data.worker_threads`` BLAS / OpenMP threads (0: the
    libraries' own count), so it does not oversubscribe the cores the trainer's torch uses."""
    from threadpoolctl import threadpool_info

    from diffunfold.training.data import batch_loader

    class Report(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield {"threads": sorted({p["num_threads"] for p in threadpool_info()})}

    if not threadpool_info():
        pytest.skip("no BLAS / OpenMP thread pool loaded to limit")
    for threads in (1, 2):
        cfg = load_config("tiny", ["data.workers=1", f"data.worker_threads={threads}"])
        (got,) = list(batch_loader(Report(), cfg))
        assert got["threads"] == [threads]
    with pytest.raises(InputError, match="worker_threads"):
        load_config("tiny", ["data.worker_threads=-1"])


def test_no_validation_images_means_no_validation():
    from diffunfold.training.data import validation_set

    assert validation_set(load_config("tiny", ["val.images=0"])) is None
    assert validation_set(load_config("tiny", ["val.images=1"]))[0].shape[0] == 1
    with pytest.raises(InputError, match="val.images"):
        load_config("tiny", ["val.images=-1"])


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_without_native_bfloat16_is_warned(native, monkeypatch, capsys):
    """Autocast on a CPU without bf16 units is emulated (28x slower a step on a Zen 3): say so."""
    from types import SimpleNamespace

    from diffunfold.training import trainer

    monkeypatch.setattr(trainer, "has_native_bf16", lambda: native)
    cfg = load_config("tiny")
    model = SimpleNamespace(regularizers=[None], stages=2)
    counts = {"total": 10, "regularizers": 9}
    ctx = SimpleNamespace(world=1)
    trainer._announce(cfg, model, counts, torch.device("cpu"), ctx, 0, True)
    err = capsys.readouterr().err
    assert ("without native bfloat16" in err) != native
    trainer._announce(cfg, model, counts, torch.device("cpu"), ctx, 0, False)  # no autocast: no warning
    assert "bfloat16" not in capsys.readouterr().err
