"""The diffusion formulations (EDM's Table 1): preconditioning, VP's sigma(t), the schedules, the
training noise levels, refusals, and a package of each against its torch model.

Export parity tolerance: the runtime (numpy physics + ONNX Runtime) against the torch reference
sampler, both float32, same seed and measurement, over a whole run of the formulation's own
schedule: ``max|runtime - torch| / max|torch| < 1e-3`` (helpers.REL_TOL, as test_runtime.py).
"""

import json

import numpy as np
import pytest
from scipy import stats

from diffunfold import edm, formulations
from diffunfold.errors import InputError
from diffunfold.package_schema import manifest_problems

SIGMAS = np.geomspace(1e-3, 200.0, 41)


@pytest.mark.parametrize("name", formulations.NAMES)
def test_denoiser_is_the_identity_at_zero_noise(name):
    """D = c_skip x + c_out F -> x as s -> 0 for any bounded F: nothing to remove."""
    f = formulations.get(name)
    s = np.array([1e-8, 1e-6])
    assert np.allclose(f.c_skip(s), 1.0, atol=1e-10) and np.allclose(f.c_out(s), 0.0, atol=1e-5)


@pytest.mark.parametrize("name", formulations.NAMES)
def test_the_loss_weight_leaves_the_network_loss_unweighted(name):
    """lambda(s) c_out(s)^2 = 1 for all four (EDM's eq. 8): the network's own target is weighted
    equally at every noise level."""
    f = formulations.get(name)
    np.testing.assert_allclose(f.loss_weight(SIGMAS) * f.c_out(SIGMAS) ** 2, 1.0, rtol=1e-12)


def test_network_targets():
    """F's training target (x - c_skip (x + s n)) / c_out: the noise n for VP and iDDPM (the
    epsilon prediction), -n for VE, and unit variance for EDM on data of std sigma_data."""
    rng = np.random.default_rng(0)
    sd = edm.SIGMA_DATA
    x, n = sd * rng.standard_normal(200_000), rng.standard_normal(200_000)
    for s in (0.01, 0.5, 3.0, 60.0):
        target = {
            name: (x - f.c_skip(s) * (x + s * n)) / f.c_out(s)
            for name, f in ((k, formulations.get(k)) for k in formulations.NAMES)
        }
        np.testing.assert_allclose(target["vp"], n, atol=1e-9 * max(1.0, s))
        np.testing.assert_allclose(target["iddpm"], n, atol=1e-9 * max(1.0, s))
        np.testing.assert_allclose(target["ve"], -n, atol=1e-9 * max(1.0, s))
        assert target["edm"].std() == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("name,data_std", [("edm", edm.SIGMA_DATA), ("vp", 1.0), ("iddpm", 1.0)])
def test_c_in_gives_the_network_unit_variance(name, data_std):
    """EDM scales for data of std sigma_data; VP and iDDPM for unit-variance data (Table 1).
    VE's c_in is 1: its input has variance sigma_data^2 + s^2."""
    f = formulations.get(name)
    np.testing.assert_allclose(f.c_in(SIGMAS) ** 2 * (data_std**2 + SIGMAS**2), 1.0, rtol=1e-12)
    assert np.all(formulations.get("ve").c_in(SIGMAS) == 1.0)


def test_vp_sigma_and_its_inverse_round_trip():
    t = np.linspace(formulations.VP_EPS_T, 1.0, 101)
    np.testing.assert_allclose(formulations.vp_t(formulations.vp_sigma(t)), t, rtol=1e-10)
    np.testing.assert_allclose(formulations.vp_sigma(formulations.vp_t(SIGMAS)), SIGMAS, rtol=1e-10)
    assert formulations.vp_sigma(1.0) == pytest.approx(152.17, abs=0.01)  # EDM's VP sigma_max
    torch = pytest.importorskip("torch")
    tt = torch.tensor(t, dtype=torch.float32)  # the graph's float32: no cancellation near t = 0
    np.testing.assert_allclose(formulations.vp_t(formulations.vp_sigma(tt)).numpy(), t, rtol=2e-5)


@pytest.mark.parametrize("name", formulations.NAMES)
@pytest.mark.parametrize("steps", [1, 2, 7, 18])
def test_schedules_decrease_from_sigma_max_and_end_at_zero(name, steps):
    f = formulations.get(name)
    s = formulations.schedule(name, steps)
    assert s.shape == (steps + 1,) and s[-1] == 0.0 and np.all(np.diff(s) < 0)
    assert s[0] == pytest.approx(f.sigma_max, rel=1e-12)
    if steps > 1:
        assert s[-2] == pytest.approx(f.sigma_min, rel=1e-12)
    lo, hi = 0.05, 5.0  # explicit ranges are honoured too
    t = formulations.schedule(name, steps, sigma_min=lo, sigma_max=hi)
    assert np.all(np.diff(t) < 0) and t[-1] == 0 and lo * 0.8 <= t[-2] and t[0] <= hi


def test_each_schedule_is_its_papers():
    ve = formulations.schedule("ve", 10)[:-1]
    np.testing.assert_allclose(ve[1:] / ve[:-1], (0.02 / 100) ** (1 / 9), rtol=1e-12)  # geometric
    vp_t = formulations.vp_t(formulations.schedule("vp", 10)[:-1])
    np.testing.assert_allclose(np.diff(vp_t), (1e-3 - 1) / 9, rtol=1e-9)  # uniform in t
    u, n = formulations.iddpm_levels(), 10
    j = np.floor(8 + (999 - 8) / (n - 1) * np.arange(n) + 0.5).astype(int)  # Table 1, j0 = 8
    np.testing.assert_array_equal(formulations.schedule("iddpm", n)[:-1], u[j])
    np.testing.assert_array_equal(formulations.schedule("edm", 18), edm.schedule(18))


def test_iddpm_levels():
    u = formulations.iddpm_levels()
    assert u.shape == (1000,) and np.all(np.diff(u) < 0) and u[-1] > 0
    assert u[8] == pytest.approx(80.0, rel=0.01)  # EDM's sigma_max for iDDPM: j0 = 8
    abar = np.sin(0.5 * np.pi * np.arange(1001) / (1000 * 1.008)) ** 2
    # away from the C1 clip the recursion telescopes: u_j^2 + 1 = abar_M / abar_j (u_M = 0)
    np.testing.assert_allclose(u[100:], np.sqrt(abar[1000] / abar[100:1000] - 1), rtol=1e-6)
    j = np.array([0, 8, 500, 999])
    np.testing.assert_allclose(formulations.get("iddpm").c_noise(u[j] * (1 + 1e-4)), (999 - j) / 999)


N = 40_000
QS = np.array([0.05, 0.25, 0.5, 0.75, 0.95])


def _quantile_gap(values, dist) -> float:
    return float(np.max(np.abs(np.quantile(values, QS) - dist.ppf(QS))))


def test_training_sigmas_follow_each_distribution():
    rng = np.random.default_rng(0)
    draw = {name: formulations.training_sigmas(name, rng, N) for name in formulations.NAMES}
    assert _quantile_gap(np.log(draw["edm"]), stats.norm(edm.P_MEAN, edm.P_STD)) < 0.03
    assert _quantile_gap(formulations.vp_t(draw["vp"]), stats.uniform(1e-5, 1 - 1e-5)) < 0.01
    lo, hi = np.log(0.02), np.log(100.0)
    assert _quantile_gap(np.log(draw["ve"]), stats.uniform(lo, hi - lo)) < 0.05
    u = formulations.iddpm_levels()
    j = np.searchsorted(-u, -draw["iddpm"])  # u is decreasing: the index of each draw
    np.testing.assert_array_equal(u[j], draw["iddpm"])
    assert _quantile_gap(j, stats.uniform(0, 999)) < 10
    # the same stream as before the setting: EDM's draws are edm.training_sigmas'
    np.testing.assert_array_equal(
        formulations.training_sigmas("edm", np.random.default_rng(3), 5),
        edm.training_sigmas(np.random.default_rng(3), 5),
    )


def test_bad_names_are_refused_with_the_list():
    with pytest.raises(InputError, match=r"'ddpm'.*\['edm', 'vp', 've', 'iddpm'\]"):
        formulations.get("ddpm")
    assert formulations.get(None).name == "edm"
    bad = {"schedule": {"formulation": "ncsn"}}
    assert any("schedule.formulation must be one of" in p for p in manifest_problems(bad))
    assert not any("formulation" in p for p in manifest_problems({"schedule": {}}))  # old packages: EDM


def _model(name: str, seed: int = 0):
    torch = pytest.importorskip("torch")
    from helpers import TINY_UNET

    from diffunfold.training.model import DiffUnfolding, ModelSettings

    torch.manual_seed(seed)
    model = DiffUnfolding(ModelSettings(stages=2, shared=True, unet=dict(TINY_UNET), formulation=name))
    with torch.no_grad():  # off the zero initialisation, so c_out F and c_noise count
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_model_setting_is_checked_and_sets_the_weights_range():
    pytest.importorskip("torch")
    from diffunfold.training.model import ModelSettings

    with pytest.raises(InputError, match="use one of"):
        ModelSettings(formulation="sde")
    assert ModelSettings().formulation == "edm"
    assert ModelSettings().weights_sigma_range == pytest.approx((0.002, np.exp(-1.2 + 3 * 1.2)))
    assert ModelSettings(formulation="ve").weights_sigma_range == (0.02, 100.0)
    d = ModelSettings(formulation="vp").to_dict()
    assert ModelSettings.from_dict(d).formulation == "vp"


# VP (log1p in the graph) and iDDPM (an ArgMin over its 1000 levels) stay in the quick run; EDM is
# test_runtime.py's, and VE's graph differs from VP's in constants only.
SLOW = pytest.mark.slow


@pytest.mark.torch
@pytest.mark.parametrize("name", [pytest.param("edm", marks=SLOW), "vp", pytest.param("ve", marks=SLOW), "iddpm"])
def test_package_matches_its_torch_model(tmp_path, name):
    """Export -> runtime: the package's ONNX (preconditioning inside) and its manifest's schedule
    reproduce the torch reference sampler on the formulation's own levels."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from helpers import REL_TOL, clean_images, operator_for, quiet, rel_err

    from diffunfold.export import export_model
    from diffunfold.runtime import Solver
    from diffunfold.training.sampler import restore

    model = _model(name)
    pkg = export_model(model, tmp_path / "pkg", tasks=["gaussian_blur"], check=False, **quiet)  # compared below
    sched = json.loads((pkg.path / "manifest.json").read_text())["schedule"]
    assert sched["formulation"] == name and sched["sigma_max"] == formulations.get(name).sigma_max
    op = operator_for("gaussian_blur", {"sigma": 1.5})
    y = op.measure(clean_images(), 0.05, seed=[11, 12])
    solver = Solver.load(pkg, backend="onnxruntime")
    got = solver.solve(y, op, schedule="full", steps=6, seed=3)
    want = restore(model, torch.from_numpy(y), op, steps=6, seed=3)
    assert got.nfe == want.nfe == 6
    assert rel_err(got.images, want.images.numpy()) < REL_TOL
    # the formulation's own solver (EDM's Table 1) agrees too, and is another path for VP and VE
    own = solver.solve(y, op, schedule="full", steps=6, seed=3, sampler="native")
    want = restore(model, torch.from_numpy(y), op, steps=6, seed=3, sampler="native")
    assert own.nfe == want.nfe == formulations.nfe_of(name, 6, "native")
    assert rel_err(own.images, want.images.numpy()) < REL_TOL
    assert (rel_err(own.images, got.images) > 1e-3) == (name in ("vp", "ve", "edm"))
    # the regulariser at the ends of the formulation's levels (VP: 152; iDDPM's discrete c_noise)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(pkg.file("regularizer.onnx")), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    sigma = np.array([sched["sigma_max"], sched["sigma_min"]], dtype=np.float32)
    (r,) = sess.run(None, {"x": x, "sigma": sigma, "stage": np.zeros(2, dtype=np.int64)})
    with torch.no_grad():
        want = model.regularize(torch.from_numpy(x), torch.from_numpy(sigma), 0).numpy()
    assert rel_err(r, want) < 1e-4 and np.abs(want - x).max() > 1e-3  # and c_out F contributes


def test_training_batches_and_loss_follow_the_setting():
    """The hooks: a batch draws the formulation's noise levels (from the same per-image streams,
    so everything else in the batch is unchanged), and the loss weighs by its lambda(s)."""
    torch = pytest.importorskip("torch")
    from diffunfold.training.config import load_config
    from diffunfold.training.data import TrainingBatches
    from diffunfold.training.loss import unfolding_loss

    items = {}
    for name in ("edm", "iddpm"):
        cfg = load_config(
            "tiny",
            [f'model.formulation="{name}"', "train.batch_size=3", "data.size=16", 'data.tasks=["gaussian_blur"]'],
        )
        items[name] = TrainingBatches(cfg)[2]
    np.testing.assert_array_equal(items["edm"]["x"], items["iddpm"]["x"])
    np.testing.assert_array_equal(items["edm"]["y"], items["iddpm"]["y"])
    assert np.all(np.isin(items["iddpm"]["sigma"], formulations.iddpm_levels().astype(np.float32)))
    model, it = _model("iddpm"), items["iddpm"]
    x = torch.from_numpy(model.space.to_model(it["x"])).float()
    sigma = torch.from_numpy(it["sigma"])
    with torch.no_grad():
        t = unfolding_loss(model, x, sigma, torch.from_numpy(it["noise"]), torch.from_numpy(it["y"]), it["operator"])
    np.testing.assert_allclose(t.weighted.numpy(), (t.mse / sigma**2).numpy(), rtol=1e-5)
