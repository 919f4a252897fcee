"""Bad input is refused with a clear error; measurements are seeded and batch-invariant;
tasks build by name and the training samplers draw valid operators."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffunfold.errors import InputError
from diffunfold.physics import (
    GaussianBlur,
    Inpainting,
    MotionBlur,
    MRITaskSampler,
    MultiCoilMRI,
    SuperResolution,
    TaskSampler,
    birdcage_maps,
    make_operator,
    mri_mask,
    task_help,
    task_names,
)

SHAPE = (32, 48)


def blur():
    return GaussianBlur(SHAPE, 2.0)


def mri(ncoils=4):
    return MultiCoilMRI(birdcage_maps(ncoils, SHAPE), mri_mask("gaussian1d", SHAPE, 2, center_fraction=0.1))


# -- shapes and dtypes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((1, 3, 32, 40)), r"shape \(B, C, 32, 48\)"),
        (np.zeros((3, 32, 48)), r"shape \(B, C, 32, 48\)"),
        (np.zeros((1, 3, 32, 48), dtype=np.uint8), "divide uint8 images by 255"),
        (np.zeros((1, 3, 32, 48), dtype=np.float16), "float32 or float64"),
        (np.zeros((1, 3, 32, 48), dtype=np.complex64), "float32 or float64"),
        ([[1.0]], "numpy, CuPy or torch"),
    ],
)
def test_image_operator_rejects_bad_images(bad, match):
    with pytest.raises(InputError, match=match):
        blur().A(bad)


def test_sr_rejects_wrong_measurement_size():
    op = SuperResolution(SHAPE, 4)
    with pytest.raises(InputError, match=r"\(B, C, 8, 12\)"):
        op.AT(np.zeros((1, 3, 32, 48)))


def test_mri_rejects_real_images_and_wrong_coils():
    op = mri(4)
    with pytest.raises(InputError, match="complex"):
        op.A(np.zeros((1, 1) + SHAPE))
    with pytest.raises(InputError, match="1 channel"):
        op.A(np.zeros((1, 2) + SHAPE, dtype=np.complex64))
    with pytest.raises(InputError, match="5 coils but the coil maps have 4"):
        op.AT(np.zeros((1, 5) + SHAPE, dtype=np.complex64))


def test_grad_rejects_mismatched_batches_and_precisions():
    op = blur()
    x = np.zeros((2, 3) + SHAPE)
    with pytest.raises(InputError, match="same batch"):
        op.grad(x, np.zeros((1, 3) + SHAPE))
    with pytest.raises(InputError, match="same precision"):
        op.grad(x, np.zeros((2, 3) + SHAPE, dtype=np.float32))


def test_mri_rejects_mismatched_mask_and_maps():
    maps = birdcage_maps(4, SHAPE)
    with pytest.raises(InputError, match="same k-space/image grid"):
        MultiCoilMRI(maps, np.ones((32, 32)))
    with pytest.raises(InputError, match="binary"):
        MultiCoilMRI(maps, np.full(SHAPE, 0.5))
    with pytest.raises(InputError, match="batch"):
        MultiCoilMRI(np.stack([maps] * 2), np.ones((3, 1) + SHAPE))
    with pytest.raises(InputError, match="NaN"):
        MultiCoilMRI(np.where(np.arange(48) == 3, np.nan, maps), np.ones(SHAPE))
    with pytest.raises(InputError, match="single coil"):
        MultiCoilMRI(np.ones(SHAPE), np.ones(SHAPE))


def test_per_image_constants_need_the_matching_batch():
    op = Inpainting(np.ones((2, 1) + SHAPE))
    op.A(np.zeros((2, 3) + SHAPE))
    with pytest.raises(InputError, match="per-image masks or maps for 2 images"):
        op.A(np.zeros((3, 3) + SHAPE))


def test_bad_operator_parameters():
    with pytest.raises(InputError, match="not divisible"):
        SuperResolution((30, 48), 4)
    with pytest.raises(InputError, match="integer"):
        SuperResolution(SHAPE, 2.5)
    with pytest.raises(InputError, match="too wide"):
        GaussianBlur(SHAPE, 10.0)
    with pytest.raises(InputError, match="positive"):
        GaussianBlur(SHAPE, -1.0)
    with pytest.raises(InputError, match="motion length"):
        MotionBlur(SHAPE, 40, 0.0)
    with pytest.raises(InputError, match="probability"):
        Inpainting.random(SHAPE, 1.2)
    with pytest.raises(InputError, match="binary"):
        Inpainting(np.full(SHAPE, 0.3))


# -- NaN / Inf --------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [blur, mri])
def test_nan_in_measurement_is_refused(make, backend):
    op = make()
    dtype = np.complex64 if op.complex_image else np.float32
    y = np.zeros(op.measurement_shape((1, 1 if op.complex_image else 3) + SHAPE), dtype=dtype)
    if op.complex_image:
        y = np.zeros((1, op.ncoils) + SHAPE, dtype=dtype)
    y[0, 0, 3, 4] = np.inf if op.complex_image else np.nan
    y = backend.asarray(y)
    with pytest.raises(InputError, match="NaN or Inf"):
        op.pinv(y)
    with pytest.raises(InputError, match="NaN or Inf"):
        op.check_measurement(y)


def test_nan_in_clean_image_is_refused():
    x = np.zeros((1, 3) + SHAPE)
    x[0, 1, 2, 2] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        blur().measure(x, 0.1, seed=0)


# -- measurement noise ------------------------------------------------------------------------------


def test_measure_is_seeded_and_has_the_requested_std():
    op = blur()
    x = np.random.default_rng(0).random((4, 3) + SHAPE)
    y1 = op.measure(x, 0.05, seed=123)
    np.testing.assert_array_equal(y1, op.measure(x, 0.05, seed=123))
    assert not np.array_equal(y1, op.measure(x, 0.05, seed=124))
    assert np.std(y1 - op.A(x)) == pytest.approx(0.05, rel=0.03)
    np.testing.assert_array_equal(op.measure(x, 0.0, seed=1), op.A(x))


def test_per_image_seeds_and_stds_are_batch_invariant():
    op = blur()
    x = np.random.default_rng(1).random((3, 3) + SHAPE)
    y = op.measure(x, [0.01, 0.05, 0.1], seed=[7, 8, 9])
    alone = op.measure(x[1:2], [0.05], seed=[8])
    np.testing.assert_allclose(y[1:2], alone, rtol=1e-12)
    stds = [np.std(y[i] - op.A(x)[i]) for i in range(3)]
    assert stds == pytest.approx([0.01, 0.05, 0.1], rel=0.08)
    with pytest.raises(InputError, match="one per image"):
        op.measure(x, 0.1, seed=[1, 2])
    with pytest.raises(InputError, match="one value per image"):
        op.measure(x, [0.1, 0.2], seed=0)
    with pytest.raises(InputError, match=">= 0"):
        op.measure(x, -0.1, seed=0)


def test_complex_noise_is_circular_with_total_variance(backend):
    op = mri(4)
    x = np.zeros((1, 1) + SHAPE, dtype=np.complex128)
    noise = op.measure(backend.asarray(x), 0.2, seed=5)
    from diffunfold._array import to_numpy

    n = to_numpy(noise)
    np.testing.assert_allclose(n, op.measure(x, 0.2, seed=5), rtol=1e-12)  # same noise on every backend
    sampled = np.broadcast_to(np.asarray(op.mask) > 0, n.shape)  # noise only in sampled k-space
    assert np.all(n[~sampled] == 0)
    n = n[sampled]
    assert np.mean(np.abs(n) ** 2) == pytest.approx(0.04, rel=0.05)
    assert np.var(n.real) == pytest.approx(np.var(n.imag), rel=0.1)


# -- tasks and samplers -----------------------------------------------------------------------------


def test_every_task_builds_by_name_with_defaults():
    for name in task_names():
        op = make_operator(name, (64, 64))
        assert op.image_shape == (64, 64)
        assert name in task_help(name) or task_help(name)  # documented
    assert isinstance(make_operator("deblur", (64, 64)), GaussianBlur)
    sr = make_operator("sr", (64, 64), factor=8, kernel="bicubic")
    assert sr.factor == 8 and sr.kernel == "bicubic"


def test_unknown_task_and_parameter_are_explained():
    with pytest.raises(InputError, match="known tasks"):
        make_operator("dehaze", (64, 64))
    with pytest.raises(InputError, match="unknown parameter"):
        make_operator("sr", (64, 64), scale=4)


def test_task_sampler_draws_valid_operators_over_all_families():
    sampler = TaskSampler((64, 64))
    assert sampler.sr_factors_in_use == (4, 8)  # x16 would leave 4 px at 64 px
    rng = np.random.default_rng(0)
    seen = set()
    x = np.random.default_rng(1).random((2, 3, 64, 64))
    for _ in range(60):
        task = sampler.sample(rng)
        seen.add(task.task)
        y = task.operator.A(x)
        assert np.all(np.isfinite(y))
        if task.task == "sr":
            assert task.params["factor"] in (4, 8)
        if task.task == "inpainting":
            assert 0.2 <= task.params["missing"] <= 0.6
        if task.task == "anisotropic_blur":
            assert 0 <= task.params["angle"] <= math.pi
    assert seen == {"gaussian_blur", "anisotropic_blur", "sr", "inpainting"}
    assert TaskSampler((256, 256)).sr_factors_in_use == (4, 8, 16)
    with pytest.raises(InputError, match="no SR factor"):
        TaskSampler((24, 24))


def test_task_sampler_is_deterministic_per_rng():
    a = [TaskSampler((64, 64)).sample(np.random.default_rng(3)).params for _ in range(2)]
    assert a[0] == a[1]


def test_mri_task_sampler():
    maps = birdcage_maps(4, (64, 64))
    sampler = MRITaskSampler()
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(30):
        task = sampler.sample(rng, maps)
        kinds.add(task.params["kind"])
        assert task.operator.acceleration == pytest.approx(task.params["acceleration"], rel=0.05)
    assert kinds == {"uniform1d", "gaussian1d", "gaussian2d"}


@pytest.mark.parametrize("shape", [(64, 64), (128, 96)])
def test_every_sampled_training_operator_is_exact_and_bounded(shape):
    """Training draws a fresh operator per batch: all of them, not just hand-picked ones,
    must have an exact adjoint and ||A|| <= 1."""
    from diffunfold.physics import adjoint_error, random_pair, spectral_norm

    sampler = TaskSampler(shape, sr_kernels=("box", "bicubic"))
    rng = np.random.default_rng(42)
    for _ in range(25):
        task = sampler.sample(rng)
        x, y = random_pair(task.operator, seed=int(rng.integers(1000)))
        assert adjoint_error(task.operator, x, y) < 1e-10, task
        assert spectral_norm(task.operator, x, iters=20) <= 1 + 1e-9, task


def test_every_sampled_mri_operator_is_exact_and_bounded():
    from diffunfold.physics import adjoint_error, random_pair, spectral_norm

    maps = birdcage_maps(5, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(12):
        task = MRITaskSampler().sample(rng, maps)
        x, y = random_pair(task.operator, seed=int(rng.integers(1000)))
        assert adjoint_error(task.operator, x, y) < 1e-10, task.params
        assert spectral_norm(task.operator, x, iters=20) <= 1 + 1e-9, task.params
