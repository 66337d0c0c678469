"""What only the Numba backend has: its on-disk cache, its behaviour when Numba
is missing, one compiled specialisation per kernel and dtype, and its own
float32 activations.

Correctness against the reference is not here: every test taking the
``backend`` fixture (test_backends.py, test_torch_parity.py, ...) runs the
Numba backend too.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.special import expit

import fastrnn
from conftest import make_params, make_states, make_x, run_backward, run_forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_numba = pytest.mark.skipif("numba" not in fastrnn.available_backends(),
                                 reason="the Numba backend is not available")


def run_python(code, **env):
    """Run ``code`` in a new interpreter with fastrnn importable; return its stdout."""
    env = dict(os.environ, **env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


# ---------------------------------------------------------------------- cache

CACHE_PROBE = """
    import json
    import numpy as np
    import fastrnn
    from fastrnn._numba import kernels
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    params = [rng.standard_normal(s).astype(np.float32) for s in [(5, 4), (5, 5), (5,), (5,)]]
    out = fastrnn.rnn_forward(x, None, *params, training=True, backend="numba")
    fastrnn.rnn_backward(out.workspace, np.ones_like(out.y))
    stats = [kernels.rnn_forward.stats, kernels.rnn_backward.stats]
    print(json.dumps({"misses": sum(sum(s.cache_misses.values()) for s in stats),
                      "hits": sum(sum(s.cache_hits.values()) for s in stats),
                      "y": out.y.sum().item()}))
"""


@needs_numba
def test_a_second_process_loads_the_kernels_from_the_cache(tmp_path):
    """The first process compiles (cache misses) and writes the cache; a second
    one with the same NUMBA_CACHE_DIR compiles nothing (only cache hits)."""
    first = json.loads(run_python(CACHE_PROBE, NUMBA_CACHE_DIR=str(tmp_path)))
    assert first["misses"] == 2 and first["hits"] == 0
    assert any(tmp_path.rglob("*.nbi")) and any(tmp_path.rglob("*.nbc"))
    second = json.loads(run_python(CACHE_PROBE, NUMBA_CACHE_DIR=str(tmp_path)))
    assert second["misses"] == 0 and second["hits"] == 2
    assert second["y"] == first["y"]


# ------------------------------------------------------------- Numba missing

# what makes the backend unavailable -> (module made unimportable, environment, reason)
UNAVAILABLE = {
    "no_numba": ("numba", {}, "ModuleNotFoundError: import of numba halted"),
    "no_scipy_blas": ("scipy.linalg.cython_blas", {},
                      "ModuleNotFoundError: import of scipy.linalg.cython_blas halted"),
    "jit_disabled": (None, {"NUMBA_DISABLE_JIT": "1"}, "ImportError: the Numba backend needs"),
}


@pytest.mark.parametrize("case", UNAVAILABLE)
def test_without_numba_fastrnn_works_and_explains(case):
    """With Numba (or SciPy's BLAS, which the kernels call, or Numba's compiler)
    unavailable, fastrnn still imports and computes with what is left, and
    asking for the Numba backend raises RuntimeError with the reason."""
    blocked, env, reason = UNAVAILABLE[case]
    out = run_python(f"""
        import json, sys
        if {blocked!r}:
            sys.modules[{blocked!r}] = None      # makes "import {blocked}" fail
        import numpy as np
        import fastrnn
        x = np.ones((2, 1, 3))
        params = [np.full(s, 0.1) for s in [(4, 3), (4, 4), (4,), (4,)]]
        y = fastrnn.rnn_forward(x, None, *params).y
        try:
            fastrnn.rnn_forward(x, None, *params, backend="numba")
            error = None
        except RuntimeError as exc:
            error = str(exc)
        print(json.dumps({{"available": fastrnn.available_backends(), "error": error,
                          "y": y.tolist()}}))
    """, **env)
    result = json.loads(out)
    assert "numba" not in result["available"] and "reference" in result["available"]
    assert np.all(np.isfinite(result["y"]))
    assert result["error"] is not None
    assert "'numba' is not available" in result["error"] and reason in result["error"]


# ---------------------------------------------------- one compiled version

@needs_numba
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_one_specialisation_per_kernel_and_dtype(cell):
    """Read-only or writeable arguments, lengths or none, dy or none, training or
    not: every call reuses the same compiled kernel (compiling costs seconds)."""
    from fastrnn._numba import kernels
    base = "rnn" if cell.startswith("rnn") else cell
    dispatchers = [getattr(kernels, f"{base}_forward"), getattr(kernels, f"{base}_backward")]
    T, B, I, H = 4, 3, 5, 6
    for flags in ([], ["readonly"], ["lengths"], ["readonly", "lengths", "no_dy"]):
        x = make_x(T, B, I, np.float32)
        states = make_states(cell, B, H, np.float32)
        params = make_params(cell, I, H, np.float32)
        dy = np.ones((T, B, H), np.float32)
        lengths = np.array([4, 0, 2]) if "lengths" in flags else None
        if "readonly" in flags:
            for a in (x, dy) + states + params:
                a.flags.writeable = False
        run_forward(cell, "numba", x, states, params, lengths=lengths)
        out = run_forward(cell, "numba", x, states, params, lengths=lengths, training=True)
        run_backward(cell, out.workspace, None if "no_dy" in flags else dy)
    for d in dispatchers:
        float32 = [sig for sig in d.signatures if str(sig[0].dtype) == "float32"]
        assert len(float32) == 1, (d.__name__, d.signatures)


@needs_numba
def test_weight_gradient_scratch_covers_each_turned_around_product():
    """The backend sizes the scratch of the turned-around weight gradients
    (dW^T = a^T @ dg, from WGRAD_TRANSPOSED_MIN_ROWS rows, when G > n) for the
    largest dW that turns around, and allocates none when none does."""
    from fastrnn._numba import kernels
    rows = kernels.WGRAD_TRANSPOSED_MIN_ROWS
    assert kernels.wgrad_scratch_size(rows - 1, 24, (5, 6)) == 0      # too few rows
    assert kernels.wgrad_scratch_size(rows, 24, (5, 6)) == 24 * 6     # dW_ih and dW_hh
    assert kernels.wgrad_scratch_size(rows, 24, (30, 6)) == 24 * 6    # dW_ih (24, 30) does not
    assert kernels.wgrad_scratch_size(rows, 8, (8, 9)) == 0           # G <= n: neither


# ------------------------------------------------------- float32 activations
# The same bounds as src_ext/_vmath.h (checked for Cython in test_vmath.py): the
# Numba kernels use the same algorithm and constants.

X = np.concatenate([
    np.linspace(-100, 100, 400_001),
    np.linspace(-1, 1, 400_001),
    [0.0, -0.0, 1e-30, -1e-30, 1e-8, 87.9, -87.9, 88.5, -88.5, 1e4, -1e4, 3e38, -3e38],
]).astype(np.float32)
EXACT = {"sigmoid": expit, "tanh": np.tanh}
BOUND = {"sigmoid": 1.5e-7, "tanh": 2.5e-7}


def activation(name):
    from fastrnn._numba import kernels
    return {"sigmoid": kernels.apply_sigmoid, "tanh": kernels.apply_tanh}[name]


@needs_numba
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_float32_absolute_error_is_bounded(name):
    out = np.empty_like(X)
    activation(name)(X, out)
    err = np.abs(out.astype(np.float64) - EXACT[name](X.astype(np.float64)))
    assert err.max() <= BOUND[name], (name, float(err.max()), float(X[err.argmax()]))


@needs_numba
def test_tanh_keeps_relative_accuracy_near_zero():
    x = np.array([1e-30, -1e-20, 1e-8, -1e-5, 1e-3, 0.2, -0.26], np.float32)
    out = np.empty_like(x)
    activation("tanh")(x, out)
    exact = np.tanh(x.astype(np.float64))
    assert np.all(np.abs(out - exact) <= 4e-7 * np.abs(exact))


@needs_numba
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_propagates_and_infinities_saturate(name, dtype):
    x = np.array([np.nan, np.inf, -np.inf], dtype)
    out = np.empty_like(x)
    activation(name)(x, out)
    low = 0.0 if name == "sigmoid" else -1.0
    assert np.isnan(out[0])
    assert out[1] == 1.0
    assert abs(out[2] - low) < 1e-30


@needs_numba
def test_float64_matches_numpy_to_rounding():
    x = np.linspace(-40, 40, 100_001)
    out = np.empty_like(x)
    activation("tanh")(x, out)
    np.testing.assert_allclose(out, np.tanh(x), rtol=1e-15, atol=1e-300)
    activation("sigmoid")(x, out)
    np.testing.assert_allclose(out, EXACT["sigmoid"](x), rtol=1e-15, atol=1e-300)
