"""What only the Numba backend has: its on-disk cache, its behaviour when Numba
is missing, one compiled specialisation per kernel and dtype, its own
float32 activations, and its packed recurrent product.

Correctness against the reference is mostly not here: every test taking the
``backend`` fixture (test_backends.py, test_torch_parity.py, ...) runs the
Numba backend too. Only the packed path is forced here for every kernel, at
the batch sizes and widths its remainders need.
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
from conftest import (cast, expected_panels, make_lengths, make_params, make_states, make_x,
                      run_backward, run_forward)
from test_backends import assert_matches, forward_backward, make_case
from test_projection import assert_matches as projected_assert_matches
from test_projection import forward_backward as projected_forward_backward
from test_projection import projected_case

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


# ------------------------------------------------- packed recurrent product
# float32 batches up to PACKED_MAX_B rows multiply by W_hh through packed
# panels (kernels.packed_product): blocks of 4 rows plus 1-3 rows one at a
# time, panels of 16 columns with the last one zero-padded. B = 1..9 covers
# every remainder with and without whole blocks; N = G*H = 5, 17, 33, 20, 68,
# 132, ... panels that are partial or one column past whole.

PACKED_B = [1, 2, 3, 4, 5, 7, 9]


@needs_numba
@pytest.mark.parametrize("trans", [False, True], ids=["W", "W.T"])
@pytest.mark.parametrize("K", [1, 3, 4, 5, 17, 64])
@pytest.mark.parametrize("N", [1, 5, 16, 17, 33, 70])
def test_pack_lays_out_panels(K, N, trans):
    """packed[p, k, j] = op(W)[k, p * PANEL + j], zero past column N, exactly,
    and nothing written past ``packed_size``."""
    from fastrnn._numba import kernels
    P = kernels.PANEL
    rng = np.random.default_rng(K * 1000 + N)
    w = rng.standard_normal((N, K) if trans else (K, N)).astype(np.float32)
    expected = expected_panels(w, trans, P)
    size = kernels.packed_size(K, N)
    assert size == expected.size
    buf = np.full(size + 5, np.nan, np.float32)
    kernels.pack(w.ravel(), trans, K, N, buf)
    np.testing.assert_array_equal(buf[:size], expected)
    assert np.isnan(buf[size:]).all()


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "gemm"])
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("trans", [False, True], ids=["W", "W.T"])
@pytest.mark.parametrize("K,N", [(1, 1), (3, 5), (4, 16), (17, 33), (64, 70), (130, 20)])
@pytest.mark.parametrize("B", PACKED_B)
@pytest.mark.parametrize("step", [0, 1], ids=["even-step", "odd-step"])
def test_recurrent_product_matches_float64(B, K, N, trans, beta, packed, dtype, step):
    """``kernels.recurrent_product`` on both of its paths (the float64 kernels
    compile the packed one too, though the backend never packs for them).

    |error| <= K * eps * sum|h||W| bounds the rounding of a K-term dot
    product; 4 * eps * sqrt(K) * scale is a comfortable practical margin
    below that worst case (as tests/test_packing.py for the Cython product).
    beta = 0 must overwrite ``out``: it starts as NaN then.
    """
    from fastrnn._numba import kernels
    rng = np.random.default_rng(B * 10000 + K * 100 + N)
    h = rng.standard_normal((B, K)).astype(dtype)
    w = rng.standard_normal((N, K) if trans else (K, N)).astype(dtype)
    out = rng.standard_normal((B, N)).astype(dtype)
    op_w = (w.T if trans else w).astype(np.float64)
    expected = h.astype(np.float64) @ op_w + beta * out.astype(np.float64)
    if beta == 0:
        out[:] = np.nan
    buf = np.empty(0, dtype)
    if packed:
        buf = np.empty(kernels.packed_size(K, N), dtype)
        kernels.pack(w.ravel(), trans, K, N, buf)
    kernels.apply_recurrent_product(h.ravel(), w.ravel(), trans, buf, dtype(beta),
                                    out.ravel(), B, K, N, step)
    scale = np.abs(h).astype(np.float64) @ np.abs(op_w) + np.abs(expected)
    assert np.all(np.abs(out - expected) <= 4 * np.finfo(dtype).eps * np.sqrt(K) * scale)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (1, 9, 7), (2, 13, 8), (3, 8, 17), (4, 4, 8),
                                   (4, 5, 3), (5, 11, 16), (7, 30, 33), (8, 64, 100),
                                   (13, 21, 9), (32, 70, 64), (33, 6, 12)])
def test_few_rows_nt_matches_float64(M, N, K, beta, dtype):
    """``kernels.few_rows_nt``: A @ W^T for W in PyTorch's layout, its 4 x 4
    blocks, the rows left over in blocks of 8 columns, columns past a block's
    edge and K past the last whole chunk of LANES, within the bound of
    ``test_recurrent_product_matches_float64``; beta = 0 overwrites NaN."""
    from fastrnn._numba import kernels
    rng = np.random.default_rng(M * 10000 + N * 100 + K)
    a = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((N, K)).astype(dtype)
    c = rng.standard_normal((M, N)).astype(dtype)
    expected = a.astype(np.float64) @ w.T.astype(np.float64) + beta * c.astype(np.float64)
    if beta == 0:
        c[:] = np.nan
    kernels.apply_few_rows_nt(a.ravel(), w.ravel(), dtype(beta), c.ravel(), M, N, K)
    scale = np.abs(a).astype(np.float64) @ np.abs(w.T) + np.abs(expected)
    assert np.all(np.abs(c - expected) <= 4 * np.finfo(dtype).eps * np.sqrt(K) * scale)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_products_of_a_few_rows_by_w_transposed_take_few_rows_nt(dtype):
    """``gemm`` gives products by W^T of ``NT_MIN_ROWS`` to ``nt_max_rows``
    rows (32 float32, 16 float64) to ``few_rows_nt``: the kernels' recurrent
    product without panels gets its bits there, and not just under it."""
    from fastrnn._numba import kernels
    rng = np.random.default_rng(3)
    K, N = 20, 36
    w = rng.standard_normal((N, K)).astype(dtype)
    last = 32 if dtype == np.float32 else 16
    for M in (kernels.NT_MIN_ROWS - 1, kernels.NT_MIN_ROWS, 9, last, last + 1):
        h = rng.standard_normal((M, K)).astype(dtype)
        via_gemm = np.full(M * N, np.nan, dtype)
        kernels.apply_recurrent_product(h.ravel(), w.ravel(), True, np.empty(0, dtype),
                                        dtype(0), via_gemm, M, K, N, 0)
        direct = np.full(M * N, np.nan, dtype)
        kernels.apply_few_rows_nt(h.ravel(), w.ravel(), dtype(0), direct, M, N, K)
        if kernels.NT_MIN_ROWS <= M <= last:
            np.testing.assert_array_equal(via_gemm, direct)
        else:       # BLAS sums in its own order: equal only by chance, and not here
            assert not np.array_equal(via_gemm, direct), M


@needs_numba
@pytest.mark.parametrize("B,K,N", [(1, 9, 40), (5, 17, 33), (9, 64, 80)])
def test_odd_steps_walk_the_panels_backwards_with_the_same_bits(B, K, N):
    """The time loops pass their step; odd steps walk the panels from the
    last (``packed_product``). Each column's sums must not notice."""
    from fastrnn._numba import kernels
    rng = np.random.default_rng(B + K + N)
    h = rng.standard_normal((B, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    buf = np.empty(kernels.packed_size(K, N), np.float32)
    kernels.pack(w.ravel(), True, K, N, buf)
    outs = []
    for step in (0, 1, 2, 7):
        out = np.full(B * N, np.nan, np.float32)
        kernels.apply_recurrent_product(h.ravel(), w.ravel(), True, buf, np.float32(0), out,
                                        B, K, N, step)
        outs.append(out)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    assert np.all(np.isfinite(outs[0]))


@pytest.fixture
def spy_packed(monkeypatch):
    """The sizes of the ``packed`` arrays the Numba backend hands its kernels."""
    from fastrnn import _numba_backend
    sizes = []
    real = _numba_backend._packed

    def spy(rec, dtype):
        arg = real(rec, dtype)
        sizes.append(arg.size)
        return arg
    monkeypatch.setattr(_numba_backend, "_packed", spy)
    return sizes


def packed_path_case(cell, B, H, reverse):
    """Inputs and output gradients of a float32 call that the Numba backend
    multiplies through packed panels (T >= PREPARE_MIN_T, B <= PACKED_MAX_B,
    too small to be split), with lengths 0, T and in between once B >= 3."""
    from fastrnn import _numba_backend
    T, I = 6, 7
    assert T >= _numba_backend.PREPARE_MIN_T and B <= _numba_backend.PACKED_MAX_B
    if cell == "lstm_projected":
        x, states, params, dy, dstates = projected_case((T, B, I, H, max(H // 2, 1)),
                                                        np.float32)
    else:
        x, states, params, dy, dstates = make_case(cell, (T, B, I, H), np.float32)
    return x, states, params, dy, dstates, dict(lengths=make_lengths("mixed", T, B),
                                                reverse=reverse)


def run_packed_case(backend, cell, x, states, params, dy, dstates, kw):
    if cell == "lstm_projected":
        return projected_forward_backward(backend, x, states, params, dy, dstates, **kw)
    return forward_backward(cell, backend, x, states, params, dy, dstates, **kw)


@needs_numba
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("H", [5, 17, 33])
@pytest.mark.parametrize("B", PACKED_B)
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru", "lstm_projected"])
def test_packed_path_matches_reference(spy_packed, cell, B, H, reverse):
    """Every Numba kernel through the packed panels against the float64
    reference: the forward's outputs and every gradient, at RTOL (justified in
    test_backends.py). The forward multiplies by W_hh^T (K = H, N = G*H,
    P and G*H with a projection), the backward by W_hh (K = G*H, N = H)."""
    case = packed_path_case(cell, B, H, reverse)
    out, grads = run_packed_case("numba", cell, *case)
    assert len(spy_packed) == 2 and all(size > 0 for size in spy_packed)
    x, states, params, dy, dstates, kw = case
    f64 = np.float64
    ref, ref_grads = run_packed_case("reference", cell, x.astype(f64), cast(states, f64),
                                     cast(params, f64), dy.astype(f64), cast(dstates, f64), kw)
    assert_matches(out, ref, np.float32)
    assert_matches(grads, ref_grads, np.float32)


@needs_numba
@pytest.mark.parametrize("k_major", [True, False], ids=["kmajor-copies", "transpose-flag"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru", "lstm_projected"])
def test_both_weight_orientations_match_the_reference(monkeypatch, cell, k_major):
    """A call long enough to prepare its weights, with a batch too large for
    the panels, copies W_ih, W_hh^T (and W_hr) K-major or reads PyTorch's
    layout through the transpose flag, by ``K_MAJOR_COPY`` (the host's
    AVX-512): both ways, against the float64 reference."""
    from fastrnn import _numba_backend
    monkeypatch.setattr(_numba_backend, "K_MAJOR_COPY", k_major)
    T, B, I, H = 5, 40, 5, 6
    assert T >= _numba_backend.PREPARE_MIN_T and B > _numba_backend.PACKED_MAX_B
    f64 = np.float64
    if cell == "lstm_projected":
        x, states, params, dy, dstates = projected_case((T, B, I, H, 4), np.float32)
        out, grads = projected_forward_backward("numba", x, states, params, dy, dstates)
        ref, ref_grads = projected_forward_backward(
            "reference", x.astype(f64), cast(states, f64), cast(params, f64), dy.astype(f64),
            cast(dstates, f64))
        projected_assert_matches(out, ref, np.float32)
        projected_assert_matches(grads, ref_grads, np.float32)
        return
    x, states, params, dy, dstates = make_case(cell, (T, B, I, H), np.float32)
    out, grads = forward_backward(cell, "numba", x, states, params, dy, dstates)
    ref, ref_grads = forward_backward(cell, "reference", x.astype(f64), cast(states, f64),
                                      cast(params, f64), dy.astype(f64), cast(dstates, f64))
    assert_matches(out, ref, np.float32)
    assert_matches(grads, ref_grads, np.float32)
