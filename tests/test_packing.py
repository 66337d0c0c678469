"""The per-step recurrent product (src_ext/_recurrent.pxd) on both of its paths.

float32 small batches use the packed-panel kernel (_packed_gemm.h), possibly
split over threads; everything else uses BLAS. Both must equal a float64
product to float32 accuracy: |error| <= K * eps32 * sum|h||W| bounds the
rounding of a K-term dot product, and 4 * eps32 * sqrt(K) * scale is a
comfortable practical margin below that worst case.
"""
import importlib

import numpy as np
import pytest

packing = pytest.importorskip("fastrnn._ext.packing", reason="the Cython extension is not built")
from fastrnn._cython_backend import runnable_builds  # noqa: E402

from conftest import (RTOL, STATE_NAMES, assert_results_equal, cast, expected_panels,  # noqa: E402
                      make_params, make_states, make_x, run_backward, run_forward)

# B covers every block of rows the builds use (8, 4 and 1 rows, and their
# mixes), K every remainder of their unrolled loops over k
SHAPES = [(1, 1, 1), (1, 7, 5), (3, 5, 17), (4, 16, 16), (5, 33, 13), (8, 19, 16),
          (9, 64, 100), (12, 9, 33), (15, 130, 47), (17, 40, 129), (32, 21, 9), (33, 8, 40)]


@pytest.fixture(params=[suffix for _, suffix in runnable_builds()],
                ids=lambda suffix: "packing" + suffix)
def build(request):
    """The packing module of each build of the kernels this CPU runs (each has
    its own packed product: setup.py, src_ext/_packed_gemm.h)."""
    return importlib.import_module(f"fastrnn._ext.packing{request.param}")


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("trans", [False, True], ids=["W", "W.T"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "blas"])
@pytest.mark.parametrize("B,K,N", SHAPES)
def test_product_matches_float64(build, B, K, N, packed, trans, beta, n_threads):
    rng = np.random.default_rng(B * 1000 + K * 10 + N)
    h = rng.standard_normal((B, K)).astype(np.float32)
    w = rng.standard_normal((N, K) if trans else (K, N)).astype(np.float32)
    out = rng.standard_normal((B, N)).astype(np.float32)
    op_w = w.T.astype(np.float64) if trans else w.astype(np.float64)
    expected = h.astype(np.float64) @ op_w + beta * out.astype(np.float64)
    buf = np.empty(build.packed_size(K, N), np.float32) if packed else None
    build.product(h, w, trans, np.float32(beta), out, packed=buf, n_threads=n_threads)
    scale = np.abs(h).astype(np.float64) @ np.abs(op_w) + np.abs(expected)
    assert np.all(np.abs(out - expected) <= 4 * np.finfo(np.float32).eps * np.sqrt(K) * scale)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("B,K,N", SHAPES + [(2, 64, 80), (9, 48, 112)])
def test_odd_steps_walk_the_panels_backwards_with_the_same_bits(build, B, K, N, n_threads):
    """The time loops pass their step: odd steps walk the panels from the last,
    which pairs them differently when their number is odd (fr_gemm_packed).
    Each column's sums must not notice."""
    rng = np.random.default_rng(B * 7 + K * 3 + N)
    h = rng.standard_normal((B, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    outs = []
    for step in (0, 1, 2, 7):
        out = np.full((B, N), np.nan, np.float32)
        build.product(h, w, True, np.float32(0), out, n_threads=n_threads, step=step,
                      packed=np.empty(build.packed_size(K, N), np.float32))
        outs.append(out)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    assert np.all(np.isfinite(outs[0]))


def test_packed_buffer_too_small_is_an_error():
    h = np.ones((2, 8), np.float32)
    w = np.ones((8, 20), np.float32)
    out = np.zeros((2, 20), np.float32)
    with pytest.raises(ValueError, match="packed must hold at least"):
        packing.product(h, w, False, np.float32(0), out,
                        packed=np.empty(packing.packed_size(8, 20) - 1, np.float32))


PATHS = {   # _cython_backend settings that force each way of multiplying by W_hh
    "packed": dict(PACKED_MAX_B=10**9, PREPARE_MIN_T=1, PARALLEL_MIN_MACS=None),
    "packed-threads": dict(PACKED_MAX_B=10**9, PREPARE_MIN_T=1, PARALLEL_MIN_MACS=0),
    "kmajor-copy": dict(PACKED_MAX_B=0, PREPARE_MIN_T=1, K_MAJOR_COPY=True),
    "prepared-transpose-flag": dict(PACKED_MAX_B=0, PREPARE_MIN_T=1, K_MAJOR_COPY=False),
    "transpose-flag": dict(PREPARE_MIN_T=10**9),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_every_recurrent_path_matches_the_reference(monkeypatch, cell, reverse, path):
    """Each way the Cython backend can multiply by W_hh, forced in turn, in
    float32 with lengths, against the float64 reference, in training and in
    inference (which alternates two state slots instead of keeping T+1)."""
    cython_backend = pytest.importorskip("fastrnn._cython_backend")
    for name, value in PATHS[path].items():
        monkeypatch.setattr(cython_backend, name, value)
    T, B, I, H = 6, 24, 9, 40
    x, states, params = make_x(T, B, I), make_states(cell, B, H), make_params(cell, I, H)
    rng = np.random.default_rng(4)
    lengths = rng.integers(0, T + 1, B)
    dy = rng.standard_normal((T, B, H))
    dstates = tuple(rng.standard_normal((B, H)) for _ in STATE_NAMES[cell])
    results = {}
    for dtype, name in [(np.float32, "cython"), (np.float64, "reference")]:
        out = run_forward(cell, name, cast((x,), dtype)[0], cast(states, dtype),
                          cast(params, dtype), lengths=lengths, reverse=reverse, training=True)
        results[dtype] = out, run_backward(cell, out.workspace, cast((dy,), dtype)[0],
                                           cast(dstates, dtype))
    for got, expected in zip(results[np.float32], results[np.float64]):
        assert_results_equal(got, expected, exact=False, rtol=RTOL[np.dtype(np.float32)])
    inference = run_forward(cell, "cython", cast((x,), np.float32)[0], cast(states, np.float32),
                            cast(params, np.float32), lengths=lengths, reverse=reverse)
    assert_results_equal(inference, results[np.float64][0], exact=False,
                         rtol=RTOL[np.dtype(np.float32)])


@pytest.mark.parametrize("trans", [False, True], ids=["W", "W.T"])
@pytest.mark.parametrize("K", [1, 3, 4, 5, 8, 13, 64, 130])
@pytest.mark.parametrize("N", [1, 4, 15, 16, 17, 33, 100])
def test_pack_lays_out_panels(K, N, trans):
    """packed[p, k, j] = op(W)[k, p * PANEL + j], zero past column N, exactly:
    the fast paths (vector copies of rows, 4 x 4 transposes of columns) and the
    element-by-element edges must write the same bytes."""
    P = packing.PANEL
    rng = np.random.default_rng(K * 1000 + N)
    w = rng.standard_normal((N, K) if trans else (K, N)).astype(np.float32)
    expected = expected_panels(w, trans, P)
    size = packing.packed_size(K, N)
    assert size == expected.size
    buf = np.full(size + 5, np.nan, np.float32)       # the pack writes no further
    packing.pack(w, trans, buf)
    np.testing.assert_array_equal(buf[:size], expected)
    assert np.isnan(buf[size:]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans", [False, True], ids=["W", "W.T"])
@pytest.mark.parametrize("B", [2, 5, 8, 9, 32, 33])
def test_blas_product_overwrites_with_beta_zero(B, trans, dtype):
    """beta = 0 overwrites ``out``, NaN and all: the kernels hand BLAS scratch
    from np.empty. Up to 32 float32 rows times W^T go through
    src_ext/_small_gemm.h, other products of up to 8 rows row by row through
    GEMV (``_blas.gemm``), the rest through GEMM; all must ignore what ``out``
    held."""
    K, N = 37, 70
    rng = np.random.default_rng(B)
    h = rng.standard_normal((B, K)).astype(dtype)
    w = rng.standard_normal((N, K) if trans else (K, N)).astype(dtype)
    out = np.full((B, N), np.nan, dtype)
    packing.product(h, w, trans, dtype(0), out)
    op_w = w.T if trans else w
    expected = h.astype(np.float64) @ op_w.astype(np.float64)
    tol = 4 * np.finfo(dtype).eps * np.sqrt(K) * (np.abs(h) @ np.abs(op_w))
    assert np.all(np.abs(out - expected) <= tol)


@pytest.mark.parametrize("K", [1, 5, 8, 9, 16, 31, 130])
@pytest.mark.parametrize("N", [1, 3, 4, 9, 17])
def test_few_rows_by_w_transposed_give_each_row_its_own_bits(build, K, N):
    """Up to 32 float32 rows times W^T without panels stream W once for all
    the rows (src_ext/_small_gemm.h): each row's sums depend on K only, so a
    row gets the same bits alone and in any group of rows."""
    rng = np.random.default_rng(K * 31 + N)
    h = rng.standard_normal((32, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    whole = np.empty((32, N), np.float32)
    build.product(h, w, True, np.float32(0), whole)
    for rows in [(0, 1), (1, 3), (3, 7), (2, 8), (7, 8), (5, 22), (31, 32)]:
        part = np.empty((rows[1] - rows[0], N), np.float32)
        build.product(np.ascontiguousarray(h[rows[0]:rows[1]]), w, True, np.float32(0), part)
        np.testing.assert_array_equal(part, whole[rows[0]:rows[1]])
    added = np.ones((32, N), np.float32)      # beta 1 adds each row's sums to what C holds
    build.product(h, w, True, np.float32(1), added)
    np.testing.assert_array_equal(added, np.float32(1) + whole)
