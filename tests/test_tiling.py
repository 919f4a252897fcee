"""The tiled regulariser (diffunfold.runtime.tiling), the memory check before a solve, and the
per-step progress callback, on the bundled image package (ONNX Runtime, no torch).

Agreement tolerance: on a 96x96 photo with tiles of 64 (4 tiles, overlap 16; the untiled
network sees the whole image), 6 Euler steps of Gaussian-blur restoration, tiled and untiled
agree to PSNR 33.4 dB (astronaut; coffee 34.4 dB, measured); the test asks for 30 dB. Full
18-step runs at 192x192 with the automatic tiles (128) agree to 29.1-33.3 dB over three tasks
(bench/results/tiling-agreement-*.md). The agreement is not exact even on a constant
image (36 dB there, max difference 0.12 at 6 steps): the U-Net's zero padding makes its
output near a tile's border differ from the same pixels inside a larger image. What is exact
is the blending: a regulariser that acts pixel by pixel comes out of the tiling unchanged (to
float rounding), because the blend weights sum to one everywhere.
"""

import time
from pathlib import Path

import numpy as np
import pytest

from diffunfold.data.images import bundled_image
from diffunfold.errors import InputError
from diffunfold.metrics import psnr
from diffunfold.physics import make_operator
from diffunfold.runtime import Solver, tiling
from diffunfold.runtime.tiling import TilePlan

PACKAGE = Path(__file__).resolve().parents[1] / "samples" / "models" / "image-small"
AGREEMENT_DB = 30.0


@pytest.fixture(scope="module")
def solver():
    return Solver.load(PACKAGE, backend="onnxruntime", threads=1)


@pytest.mark.parametrize("n,tile,overlap", [(64, 64, 16), (100, 64, 16), (161, 64, 16), (257, 128, 32), (130, 128, 32)])
def test_tiles_cover_the_axis_and_blend_weights_sum_to_one(n, tile, overlap):
    starts = tiling.tile_starts(n, tile, overlap)
    assert starts[0] == 0 and starts[-1] == n - tile
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap
    windows = tiling.blend_windows(starts, tile, n)
    total = np.zeros(n)
    for p, w in zip(starts, windows):
        assert np.all(w > 0)
        total[p : p + tile] += w
    assert np.allclose(total, 1.0, atol=1e-6)


def test_a_pointwise_regulariser_is_unchanged_by_tiling():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 75, 101)).astype(np.float32)
    calls = []

    def run(t):
        calls.append(t.shape)
        return 0.5 * t + t**2

    got = tiling.regularize(run, x, TilePlan(32, 8, 6), 8, np)
    want = tiling.regularize(run, x, TilePlan(None), 8, np)
    assert got.shape == x.shape and np.allclose(got, want, atol=1e-5)
    tiled = calls[:-1]
    assert len(tiled) > 1 and all(s[0] <= 6 and s[0] % 2 == 0 and s[2:] == (32, 32) for s in tiled)
    assert calls[-1] == (2, 3, 80, 104)  # untiled: padded to multiples of 8


def blurred(n, name="astronaut"):
    x = bundled_image(name, size=n)[None]
    op = make_operator("gaussian_blur", (n, n), sigma=2.0)
    return x, op, op.measure(x, 0.05, seed=0)


def test_tiled_and_untiled_agree_where_both_fit(solver):
    x, op, y = blurred(96)
    tiled = solver.solve(y, op, steps=6, noise_std=0.05, tile=64)
    whole = solver.solve(y, op, steps=6, noise_std=0.05, tile=None)
    assert tiled.tiling.startswith("tiles of 64x64") and whole.tiling == "untiled"
    assert psnr(tiled.images[0], whole.images[0], 1.0) > AGREEMENT_DB
    # as good a restoration as the untiled one (measured: 0.3 dB better)
    assert psnr(tiled.images[0], x[0], 1.0) > psnr(whole.images[0], x[0], 1.0) - 0.5


def test_small_images_run_whole_and_unchanged(solver):
    _, op, y = blurred(64)
    auto = solver.solve(y, op, steps=2, noise_std=0.05)
    whole = solver.solve(y, op, steps=2, noise_std=0.05, tile=0)
    assert auto.tiling == "untiled" and np.array_equal(auto.images, whole.images)


def test_tile_choice_follows_training_size_and_memory(solver):
    pkg = solver.package
    unrecorded = {k: v for k, v in pkg.manifest.items() if k != "tiling"}  # no measured tiles
    args = (pkg.settings, unrecorded, "auto", (1000, 1000), 8, "cpu")
    assert tiling.plan_tiles(*args, budget=None).tile == 2 * tiling.TRAIN_SIZE_DEFAULT
    per_128 = tiling.network_bytes(pkg.settings, 128, 128)
    tight = tiling.plan_tiles(*args, budget=int(per_128 / tiling.NETWORK_SHARE) - 1)
    assert tight.tile == tiling.TRAIN_SIZE_DEFAULT and tight.batch >= 1
    assert tiling.plan_tiles(*args, budget=2**40).batch == tiling.MAX_TILE_BATCH["cpu"]
    # attention makes the whole image grow faster than its pixels (4x here; its own share 16x),
    # a tile constant
    assert tiling.network_bytes(pkg.settings, 256, 256) > 5 * tiling.network_bytes(pkg.settings, 128, 128)


@pytest.mark.parametrize("bad", ["big", 12, 100, -8, 1.5, True])
def test_bad_tile_sizes_are_refused(solver, bad):
    _, op, y = blurred(64)
    with pytest.raises(InputError, match="tile"):
        solver.solve(y, op, steps=1, tile=bad)


def test_what_cannot_fit_is_refused_before_any_work(solver, monkeypatch):
    monkeypatch.setattr(tiling, "available_memory", lambda kind="cpu": 8 * 2**30)
    with pytest.raises(InputError, match=r"needs about [0-9.]+ TB .* whole image"):
        solver.plan((4000, 4000), tile=None)  # untiled: the attention alone asks for terabytes
    assert solver.plan((4000, 4000)).tile == 72  # tiled (the package's measured tiles), it fits
    with pytest.raises(InputError, match=r"only 8.0 GB is available"):
        solver.plan((40000, 40000))
    # SR x16 of a 64x64 image is a 1024x1024 solve: planned tiled, not refused (stopped here)
    op = make_operator("sr", (1024, 1024), factor=16)
    real, plans = Solver.plan, []

    def spy(self, *args, **kwargs):
        plans.append(real(self, *args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(Solver, "plan", spy)
    with pytest.raises(KeyboardInterrupt):
        solver.solve(np.zeros((1, 3, 64, 64), np.float32), op, steps=1, noise_std=0.05)
    assert plans[0].tile == 72


def test_progress_callback_sees_every_step(solver):
    _, op, y = blurred(64)
    seen = []
    solver.solve(y, op, steps=2, samples=2, noise_std=0.05, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]
    seen.clear()
    solver.solve(
        y,
        op,
        steps=1,
        samples=2,
        batch_samples=False,
        noise_std=0.05,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(1, 2), (2, 2)]


def test_a_recorded_training_size_sets_the_tiles(solver):
    manifest = dict(solver.package.manifest, train_size=32, tiling={"whole_up_to": 0})
    plan = tiling.plan_tiles(solver.package.settings, manifest, "auto", (500, 500), 8, "cpu", None)
    assert (plan.tile, plan.overlap) == (64, 16)


def test_step_bar_shows_steps_of_a_long_image_only(capsys):
    from diffunfold.progress import step_bar

    assert step_bar("quiet.png", quiet=True) is None
    slow = step_bar("slow.png", delay=0.0)
    for done in (1, 2, 3):
        time.sleep(0.15)  # tqdm redraws at most every 0.1 s
        slow(done, 3)
    quick = step_bar("quick.png", delay=60.0)
    quick(1, 1)
    err = capsys.readouterr().err
    assert "slow.png" in err and "3/3" in err and "quick.png" not in err


def test_auto_runs_whole_images_up_to_the_packages_measured_side(solver):
    pkg = solver.package
    manifest = dict(pkg.manifest, tiling={"whole_up_to": 256})
    whole = tiling.network_bytes(pkg.settings, 256, 256)
    plan = lambda shape, budget, rows=1: tiling.plan_tiles(  # noqa: E731
        pkg.settings, manifest, "auto", shape, 8, "cpu", budget, rows
    )
    assert plan((256, 256), None).tile is None and plan((250, 200), 2**40).tile is None
    assert plan((264, 256), 2**40).tile == 128  # above the measured side: tiles
    budget = int(2 * whole / tiling.NETWORK_SHARE)  # room for two whole images' networks
    assert plan((256, 256), budget, rows=2).tile is None
    assert plan((256, 256), budget, rows=3).tile == 128  # three do not fit: tiles
    assert plan((256, 256), None, rows=3).tile is None  # memory unknown: the side decides
    unrecorded = {k: v for k, v in pkg.manifest.items() if k != "tiling"}
    assert tiling.plan_tiles(pkg.settings, unrecorded, "auto", (256, 256), 8, "cpu", 2**40).tile == 128


def test_bundled_image_package_runs_128_px_whole_and_larger_images_on_its_measured_tiles():
    from diffunfold.package import ModelPackage

    pkg = ModelPackage.open(PACKAGE)
    args = (pkg.settings, pkg.manifest, "auto")
    assert tiling.plan_tiles(*args, (128, 128), 8, "cpu", 24 * 2**30).tile is None
    for side in (256, 512):
        plan = tiling.plan_tiles(*args, (side, side), 8, "cpu", 24 * 2**30)
        assert (plan.tile, plan.overlap) == (72, 8)


@pytest.mark.parametrize("bad", [{"whole_up_to": -1}, {"whole_up_to": 1.5}, {"whole_up_to": True}, [256]])
def test_a_bad_tiling_record_is_refused(bad):
    from diffunfold.package_schema import manifest_problems

    assert any("'tiling'" in p for p in manifest_problems({"tiling": bad}))


def test_a_recorded_tile_sets_the_automatic_tiles(solver):
    """``tiling.tile`` / ``tiling.overlap``: the tiles ``tile="auto"`` uses above the whole side,
    where they fit the memory; else the rule from the training size."""
    pkg = solver.package
    manifest = dict(pkg.manifest, tiling={"whole_up_to": 128, "tile": 80, "overlap": 16})
    plan = lambda shape, budget: tiling.plan_tiles(pkg.settings, manifest, "auto", shape, 8, "cpu", budget)  # noqa: E731
    assert plan((128, 128), 2**40).tile is None
    got = plan((256, 256), 2**40)
    assert (got.tile, got.overlap) == (80, 16)
    starts = tiling.tile_starts(256, got.tile, got.overlap)
    assert len(starts) == 4 and min(b - a for a, b in zip(starts, starts[1:])) <= 80 - 16
    small = int(tiling.network_bytes(pkg.settings, 64, 64) / tiling.NETWORK_SHARE)  # 80 px tiles do not fit
    assert plan((256, 256), small).tile == 64
    assert tiling.plan_tiles(pkg.settings, manifest, 96, (256, 256), 8, "cpu", 2**40).tile == 96  # asked for


@pytest.mark.parametrize("bad", [{"tile": 0}, {"tile": 80, "overlap": 80}, {"tile": 80.0}, {"tile": 80, "overlap": -1}])
def test_a_bad_recorded_tile_is_refused(solver, bad):
    from diffunfold.package_schema import manifest_problems

    record = {"whole_up_to": 128, **bad}
    assert any("'tiling' tile and overlap" in p for p in manifest_problems({"tiling": record}))
    with pytest.raises(InputError, match="tiling"):
        tiling.plan_tiles(solver.package.settings, {"tiling": record}, "auto", (256, 256), 8, "cpu", None)
