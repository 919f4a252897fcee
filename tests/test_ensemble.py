"""The self-ensemble's orientations: which sample sees which flip, and that the regulariser's
output is turned back (an equivariant map is unchanged, a directional one is conjugated)."""

import numpy as np
import pytest

from diffunfold.ensemble import ENSEMBLES, check_ensemble, flip, flip_axes, oriented
from diffunfold.errors import InputError


def test_each_sample_gets_its_flip_and_none_gets_none():
    assert [flip_axes("flips", j) for j in range(5)] == [(), (-1,), (-2,), (-2, -1), ()]
    assert all(flip_axes("none", j) == () for j in range(4))
    assert ENSEMBLES == ("none", "flips")
    for bad in ("rot90", None, 1):
        with pytest.raises(InputError, match="ensemble"):
            check_ensemble(bad)


def test_oriented_turns_each_group_back():
    x = np.random.default_rng(0).standard_normal((6, 3, 4, 5)).astype(np.float32)
    groups = [(0, 2, ()), (2, 4, (-1,)), (4, 6, (-2, -1))]
    # an equivariant map (pointwise) gives what it gives without the ensemble
    np.testing.assert_array_equal(oriented(np.tanh, x, groups), np.tanh(x))
    # a directional one (a running sum along the width) is conjugated by each group's flip
    got = oriented(lambda v: np.cumsum(v, axis=-1), x, groups)
    np.testing.assert_allclose(got[:2], np.cumsum(x[:2], axis=-1), rtol=1e-6)
    np.testing.assert_allclose(got[2:4], np.cumsum(x[2:4, ..., ::-1], axis=-1)[..., ::-1], rtol=1e-6)
    np.testing.assert_allclose(got[4:], np.cumsum(x[4:, :, ::-1, ::-1], axis=-1)[:, :, ::-1, ::-1], rtol=1e-6)
    calls = []
    oriented(lambda v: calls.append(v.shape) or v, x, groups)
    assert calls == [x.shape]  # one batched call, not one per group


def test_flip_works_on_torch_too():
    torch = pytest.importorskip("torch", reason="torch arrays need torch")
    t = torch.arange(6.0).reshape(1, 1, 2, 3)
    np.testing.assert_array_equal(flip(t, (-2, -1)).numpy(), t.numpy()[..., ::-1, ::-1])
    assert flip(t, ()) is t
