"""The float32 activations of the Cython kernels against float64 NumPy.

The bounds are the ones documented in src_ext/_vmath.h; the kernels' float32
tolerances in test_backends.py are two orders of magnitude looser, so these
approximations cannot be what makes a kernel test pass or fail.
"""
import importlib
import importlib.util

import numpy as np
import pytest
from scipy.special import expit

pytest.importorskip("fastrnn._ext.activations", reason="the Cython extension is not built")

# every build of the kernels this CPU runs (setup.py: baseline, x86-64-v3 and
# x86-64-v4, whose fused multiply-adds round differently) must keep the bounds
from fastrnn._cython_backend import runnable_builds  # noqa: E402

BUILDS = [f"fastrnn._ext.activations{suffix}" for _, suffix in runnable_builds()]


@pytest.fixture(params=BUILDS, ids=lambda name: name.rsplit(".", 1)[1])
def activations(request):
    return importlib.import_module(request.param)


# dense where the functions bend, plus the saturated tails and edge values
X = np.concatenate([
    np.linspace(-100, 100, 400_001),
    np.linspace(-1, 1, 400_001),
    [0.0, -0.0, 1e-30, -1e-30, 1e-8, 87.9, -87.9, 88.5, -88.5, 1e4, -1e4, 3e38, -3e38],
]).astype(np.float32)
EXACT = {
    "sigmoid": expit,
    "tanh": np.tanh,
}
BOUND = {"sigmoid": 1.5e-7, "tanh": 2.5e-7}


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_float32_absolute_error_is_bounded(activations, name):
    out = np.empty_like(X)
    getattr(activations, name)(X, out)
    err = np.abs(out.astype(np.float64) - EXACT[name](X.astype(np.float64)))
    assert err.max() <= BOUND[name], (name, float(err.max()), float(X[err.argmax()]))


def test_tanh_keeps_relative_accuracy_near_zero(activations):
    x = np.array([1e-30, -1e-20, 1e-8, -1e-5, 1e-3, 0.2, -0.26], np.float32)
    out = np.empty_like(x)
    activations.tanh(x, out)
    exact = np.tanh(x.astype(np.float64))
    assert np.all(np.abs(out - exact) <= 4e-7 * np.abs(exact))


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_propagates_and_infinities_saturate(activations, name, dtype):
    x = np.array([np.nan, np.inf, -np.inf], dtype)
    out = np.empty_like(x)
    getattr(activations, name)(x, out)
    low = 0.0 if name == "sigmoid" else -1.0
    assert np.isnan(out[0])
    assert out[1] == 1.0
    assert abs(out[2] - low) < 1e-30


def test_float64_matches_numpy_to_rounding(activations):
    x = np.linspace(-40, 40, 100_001)
    out = np.empty_like(x)
    activations.tanh(x, out)
    np.testing.assert_allclose(out, np.tanh(x), rtol=1e-15, atol=1e-300)   # libm vs NumPy: ~1 ulp
    activations.sigmoid(x, out)
    np.testing.assert_allclose(out, EXACT["sigmoid"](x), rtol=1e-15, atol=1e-300)
