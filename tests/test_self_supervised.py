"""Self-supervised MRI training (``train.supervision = "ssdu"``): the k-space split, the held-out
loss, batches that carry no clean image, a step and its exact resume, refused settings."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training side needs torch (the train extra)")
pytestmark = pytest.mark.torch

from helpers import TINY_MRI_TRAINING  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from diffunfold.errors import InputError  # noqa: E402
from diffunfold.physics.mri import MultiCoilMRI, birdcage_maps, mri_mask  # noqa: E402
from diffunfold.scanner.coils import calibration_region  # noqa: E402
from diffunfold.training import checkpoint as ckpt  # noqa: E402
from diffunfold.training import self_supervised as ss  # noqa: E402
from diffunfold.training.config import load_config  # noqa: E402
from diffunfold.training.data import TrainingBatches  # noqa: E402
from diffunfold.training.model import DiffUnfolding  # noqa: E402
from diffunfold.training.trainer import Distributed, _gradient, _objective, train  # noqa: E402

# A tiny MRI model on 32 px phantoms, batch 2, one thread (bitwise-reproducible on a CPU).
TINY = TINY_MRI_TRAINING + [
    'data.mri_patterns=[["gaussian1d", 4], ["gaussian2d", 8]]',
    "val.steps=1",
    "val.images=1",
    'val.tasks=[{task = "mri", kind = "gaussian1d", acceleration = 4}]',
]


def tiny(*extra):
    return load_config("mri-small", TINY + list(extra))


def _calibration(mask):
    rows, cols = calibration_region(mask)
    region = np.zeros(mask.shape, dtype=bool)
    region[rows, cols] = True
    return region


@pytest.mark.parametrize(
    "kind,acc,split",
    [("gaussian1d", 4, "lines"), ("gaussian1d", 4, "points"), ("uniform1d", 8, "lines"), ("gaussian2d", 8, "lines")],
)
def test_the_split_is_disjoint_covers_the_measured_points_and_keeps_the_calibration(kind, acc, split):
    mask = mri_mask(kind, (64, 64), acc, seed=3, center_fraction=0.5 / acc)
    measured = mask > 0
    calib = _calibration(mask)
    outside = measured & ~calib
    seen = []
    for seed in range(4):
        theta, lam = ss.split_mask(mask, 0.4, np.random.default_rng(seed), split)
        assert not np.any((theta > 0) & (lam > 0))  # disjoint
        assert np.array_equal((theta > 0) | (lam > 0), measured)  # together: what was measured
        assert np.all(theta[calib] == 1) and not np.any(lam[calib])  # calibration in the data part
        by_lines = split == "lines" and kind != "gaussian2d"
        unit = outside[0].sum() if by_lines else outside.sum()
        held = lam[0].sum() if by_lines else lam.sum()
        assert unit > 0 and held == max(1, round(0.4 * unit))
        if by_lines:  # whole lines: the data part is a 1-D pattern too
            assert np.all(lam == lam[:1]) and np.all(theta == theta[:1])
        seen.append(lam)
    assert any(not np.array_equal(seen[0], s) for s in seen[1:])  # a fresh split per draw


def test_a_pattern_all_calibration_is_split_as_a_whole():
    mask = mri_mask("uniform1d", (64, 64), 8, seed=0, center_fraction=0.125)  # 8 lines, all central
    theta, lam = ss.split_mask(mask, 0.4, np.random.default_rng(0), "lines")
    assert lam[0].sum() == 3 and np.array_equal((theta > 0) | (lam > 0), mask > 0)


def _problem(seed=0, size=32, noise=0.0):
    rng = np.random.default_rng(seed)
    maps = birdcage_maps(6, (size, size)).astype(np.complex64)
    mask = mri_mask("gaussian1d", (size, size), 4, seed=seed, center_fraction=0.1)
    x = (rng.standard_normal((2, 1, size, size)) + 1j * rng.standard_normal((2, 1, size, size))).astype(np.complex64)
    op = MultiCoilMRI(maps, mask)
    y = np.asarray(op.A(x))
    y = y + noise * (rng.standard_normal(y.shape) + 1j * rng.standard_normal(y.shape)) * np.asarray(op.mask)
    return x, op, y.astype(np.complex64)


def test_the_held_out_error_is_zero_for_a_perfect_reconstruction_and_positive_otherwise():
    x, op, y = _problem()
    item = ss.to_self_supervised({"x": x, "y": y, "operator": op}, ss.split_rngs(0, 0, 0, 2), 0.4, "lines")
    space = load_config("mri-small").model.space
    args = (torch.from_numpy(item["loss_y"]), item["loss_operator"], torch.from_numpy(item["loss_count"]))
    perfect = ss.held_out_error(space.to_model(torch.from_numpy(x)), *args, space)
    assert perfect.shape == (2,) and float(perfect.max()) < 1e-10
    off = ss.held_out_error(space.to_model(torch.from_numpy(x)) + 0.05, *args, space)
    assert float(off.min()) > 1e-6
    # Normalised per held-out location and real channel: white model-space error of std e reads ~e^2.
    e = 0.02
    noisy = space.to_model(torch.from_numpy(x)) + e * torch.randn(
        2, 2, 32, 32, generator=torch.Generator().manual_seed(1)
    )
    assert 0.5 * e**2 < float(ss.held_out_error(noisy, *args, space).mean()) < 2 * e**2


def test_the_data_part_is_the_measurement_restricted_and_the_standin_explains_it():
    x, op, y = _problem(noise=0.0)
    item = ss.to_self_supervised({"x": x, "y": y, "operator": op}, ss.split_rngs(0, 5, 0, 2), 0.4, "lines")
    assert "x" not in item
    theta = np.asarray(item["operator"].mask)
    assert np.array_equal(item["y"], (y * theta).astype(np.complex64))
    assert np.array_equal(item["loss_y"] + item["y"], y)
    # the SENSE stand-in of every measured point predicts the measured data (Tikhonov 1e-3)
    residual = np.linalg.norm(np.asarray(op.A(item["x0"])) - y) / np.linalg.norm(y)
    assert residual < 0.02


def test_the_data_part_standin_sees_no_held_out_point():
    x, op, y = _problem(noise=0.0)
    rngs = ss.split_rngs(0, 5, 0, 2)
    item = ss.to_self_supervised({"y": y, "operator": op}, rngs, 0.4, "lines", standin="data")
    lam = np.asarray(item["loss_operator"].mask)
    changed = ss.to_self_supervised(
        {"y": y + 5.0 * lam, "operator": op}, ss.split_rngs(0, 5, 0, 2), 0.4, "lines", "data"
    )
    assert np.array_equal(item["x0"], changed["x0"])  # the held-out points do not reach it
    every = ss.to_self_supervised({"y": y + 5.0 * lam, "operator": op}, ss.split_rngs(0, 5, 0, 2), 0.4, "lines")
    assert not np.allclose(item["x0"], every["x0"])  # the default stand-in uses every measured point


def test_a_batch_carries_no_clean_image_and_shares_the_supervised_draws():
    sup, ssdu = TrainingBatches(tiny())[1], TrainingBatches(tiny('train.supervision="ssdu"'))[1]
    assert "x" in sup and "x" not in ssdu and "x0" in ssdu
    assert np.array_equal(sup["sigma"], ssdu["sigma"]) and np.array_equal(sup["noise"], ssdu["noise"])
    assert np.array_equal(sup["sigma_y"], ssdu["sigma_y"])
    assert np.array_equal(ssdu["y"] + ssdu["loss_y"], sup["y"])


def test_the_loss_never_reads_the_clean_image():
    """The supervised batch's clean image poisoned with NaN: the self-supervised step on it is finite."""
    cfg = tiny('train.supervision="ssdu"')
    batch = TrainingBatches(tiny())[0]
    batch["x"] = np.full_like(batch["x"], np.nan)
    seed = ss.split_rngs(cfg.train.seed, 0, 0, 2)
    item = ss.to_self_supervised(batch, seed, cfg.train.ssdu_fraction, cfg.train.ssdu_split)
    item["x"] = batch["x"]  # even handed back, the step does not look at it
    torch.manual_seed(0)
    model = DiffUnfolding(cfg.model)
    objective = _objective(model, Distributed(), torch.device("cpu"), "ssdu")
    terms, grad_norm = _gradient(objective, model, item, model.space, torch.device("cpu"), False, 1.0)
    assert math.isfinite(float(terms["loss"])) and math.isfinite(float(grad_norm)) and float(grad_norm) > 0
    assert float(terms["mse"].min()) > 0


def test_one_step_then_resume_is_exact(tmp_path):
    cfg = tiny('train.supervision="ssdu"', "train.steps=2", "train.checkpoint_every=1", "train.keep_checkpoints=0")
    straight = train(cfg, out_dir=tmp_path / "straight", progress=False)
    assert math.isfinite(straight["loss"])
    first = tiny('train.supervision="ssdu"', "train.steps=1", "train.checkpoint_every=1", "train.keep_checkpoints=0")
    train(first, out_dir=tmp_path / "resumed", progress=False)
    train(cfg, out_dir=tmp_path / "resumed", resume=True, progress=False)
    a, b = (
        load_file(ckpt.latest_checkpoint(tmp_path / d / "checkpoints").with_suffix(".safetensors"))
        for d in ("straight", "resumed")
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert ckpt.latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "ckpt-00000002.json"


@pytest.mark.parametrize(
    "override,words",
    [
        ('train.supervision="self"', "['supervised', 'ssdu']"),
        ('train.ssdu_split="rows"', "['lines', 'points']"),
        ('train.ssdu_standin="clean"', "['measured', 'data']"),
        ("train.ssdu_fraction=1.0", "(0, 1)"),
        ("train.ssdu_fraction=0", "(0, 1)"),
    ],
)
def test_bad_settings_are_refused_with_the_choices(override, words):
    with pytest.raises(InputError) as err:
        tiny(override)
    assert words in str(err.value)


def test_ssdu_needs_mri_data():
    with pytest.raises(InputError, match="MRI data.source"):
        load_config("tiny", ['train.supervision="ssdu"'])
