"""Every backend against the NumPy reference, plus API-level behaviour every
backend must share (None arguments, memory layouts, NaN, empty shapes, ...).

All tests take the ``backend`` fixture, so they run once per available backend
(the reference included, which checks the reference in float32 and the harness).
"""
import os

import numpy as np
import pytest

import fastrnn
from conftest import (CELLS, DTYPES, N_GATES, RTOL, STATE_NAMES, arrays_of, assert_close,
                      assert_results_equal, cast, final_states, make_lengths,
                      make_params, make_states, make_x, param_grads, run_backward,
                      run_forward, state0_grads)

# Tolerances (RTOL in conftest), relative to the max-abs scale of each expected
# array, against the reference computed in float64 on the same (cast) inputs:
# - float64, rtol 1e-10: backend and reference do the same math in the same
#   precision and may differ only in summation order and fused operations, i.e.
#   by a few ulps times the dot-product length K = I + H <= 50 and the number of
#   steps T <= 9: ~1e-13. 1e-10 leaves a wide margin yet catches any wrong term.
# - float32, rtol 1e-5: float32 eps is 6e-8; dot products of length K and the
#   T-step recurrence (contractive with PyTorch's U(+-1/sqrt(H)) init), and the
#   gradient sums over T*B terms, accumulate that to ~1e-6 of the scale.
# B=1, T=1, odd I and H that are not multiples of 8; the last two are long
# (T*B > 256 rows) or wide (B > 256) enough to split an input projection into
# several blocks of steps, with a partial last block.
SHAPES = [(1, 1, 1, 1), (1, 3, 5, 7), (7, 1, 3, 5), (6, 5, 13, 11), (9, 4, 17, 33),
          (70, 4, 3, 5), (3, 300, 2, 3)]

dtype_cases = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
direction_cases = pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
cell_cases = pytest.mark.parametrize("cell", CELLS)


def make_case(cell, shape, dtype, seed=0):
    """Inputs ``(x, states, params)`` and output gradients ``(dy, dstates)`` in ``dtype``."""
    T, B, I, H = shape
    rng = np.random.default_rng(seed + 100)
    x = make_x(T, B, I, dtype, seed=seed)
    states = make_states(cell, B, H, dtype, seed=seed + 1)
    params = make_params(cell, I, H, dtype, seed=seed + 2)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dstates = tuple(rng.standard_normal((B, H)).astype(dtype) for _ in STATE_NAMES[cell])
    return x, states, params, dy, dstates


def forward_backward(cell, backend, x, states, params, dy, dstates, **kw):
    out = run_forward(cell, backend, x, states, params, training=True, **kw)
    return out, run_backward(cell, out.workspace, dy, dstates)


def reference64(cell, x, states, params, dy, dstates, **kw):
    """The reference in float64 on the given (possibly float32) values."""
    f64 = np.float64
    return forward_backward(cell, "reference", x.astype(f64), cast(states, f64),
                            cast(params, f64), dy.astype(f64), cast(dstates, f64), **kw)


def assert_matches(result, expected, dtype):
    """Every array of a result close to the reference's, and of the working dtype."""
    got = arrays_of(result)
    for name, e in arrays_of(expected).items():
        assert got[name].dtype == dtype, name
        assert_close(got[name], e, RTOL[np.dtype(dtype)], name)


# ------------------------------------------------------- against the reference

@pytest.mark.parametrize("lengths_kind", [None, "mixed", "full"])
@direction_cases
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@dtype_cases
@cell_cases
def test_matches_reference(backend, cell, dtype, shape, reverse, lengths_kind):
    T, B, I, H = shape
    x, states, params, dy, dstates = make_case(cell, shape, dtype)
    kw = dict(lengths=make_lengths(lengths_kind, T, B), reverse=reverse)

    out, grads = forward_backward(cell, backend, x, states, params, dy, dstates, **kw)
    ref, ref_grads = reference64(cell, x, states, params, dy, dstates, **kw)
    assert_matches(out, ref, dtype)
    assert_matches(grads, ref_grads, dtype)

    ws = out.workspace
    assert (ws.backend, ws.cell, ws.dtype) == (backend, cell, np.dtype(dtype))
    inference = run_forward(cell, backend, x, states, params, training=False, **kw)
    assert inference.workspace is None
    assert_results_equal(inference, out, exact=False, rtol=RTOL[np.dtype(dtype)])


@direction_cases
@cell_cases
def test_projection_chunks_match_reference(backend, cell, reverse):
    """Inference projects its inputs ``CHUNK_ROWS`` rows at a time: T=40,
    B=32, H=256 gives chunks of 32 steps (1024 rows), the last one partial."""
    from fastrnn import _buffers
    T, B, I, H = 40, 32, 3, 256
    assert _buffers.chunk(T, B, N_GATES[cell] * H) == 32
    x, states, params, dy, dstates = make_case(cell, (T, B, I, H), np.float32)
    kw = dict(lengths=make_lengths("mixed", T, B), reverse=reverse)
    out = run_forward(cell, backend, x, states, params, training=False, **kw)
    ref, _ = reference64(cell, x, states, params, dy, dstates, **kw)
    assert_matches(out, ref, np.float32)


@direction_cases
@dtype_cases
@cell_cases
def test_weight_gradients_over_many_rows_match_reference(monkeypatch, backend, cell, dtype,
                                                         reverse):
    """From 2048 rows (T*B) on, the native kernels compute the weight gradients
    turned around, dW^T = a^T @ dg, and transpose them back, when dW has more
    rows (G*H) than columns (I or H): WGRAD_TRANSPOSED_MIN_ROWS in
    src_ext/_rnn_common.pxd and fastrnn/_numba/kernels.py. T=300, B=7 (2100
    rows; B < 8, so one part, not a split batch), with I=5 < H=6 <= G*H, takes
    that path for both dW_ih and dW_hh of every cell. Except on AVX-512 CPUs,
    where OpenBLAS runs dW itself faster: the x86-64-v4 Cython build never
    turns around (.ci/run runs this test on the other builds too), and the
    Numba backend is held at 2048 rows here."""
    if backend == "numba":
        from fastrnn._numba import kernels
        monkeypatch.setattr(kernels, "WGRAD_TRANSPOSED_MIN_ROWS", 2048)
    shape = (300, 7, 5, 6)
    T, B, I, H = shape
    assert T * B >= 2048
    x, states, params, dy, dstates = make_case(cell, shape, dtype)
    kw = dict(lengths=make_lengths("mixed", T, B), reverse=reverse)
    out, grads = forward_backward(cell, backend, x, states, params, dy, dstates, **kw)
    ref, ref_grads = reference64(cell, x, states, params, dy, dstates, **kw)
    assert_matches(grads, ref_grads, dtype)


@dtype_cases
def test_saturated_tanh_derivative_keeps_its_relative_accuracy(backend, dtype):
    """tanh's derivative at output y, 1 - y*y, is small where a unit saturates
    (y near +-1). Computed as written, y*y is rounded before the subtraction
    unless the compiler fuses the two (an FMA, which the baseline x86-64 build
    does not have): in float32 that is off by up to 4.5e-5 relative for p in
    +-[3, 8] (NumPy, no FMA). The native kernels compute (1 - y)(1 + y), whose
    1 - y is exact there, in every build. One RNN step from h0 = 0 with
    pre-activations p in +-[3, 8] makes dbias_ih = dy * (1 - y*y) for the
    stored y, checked to a few roundings of the dtype against float64.
    (CI runs it with FASTRNN_ISA=baseline too.)"""
    if backend == "reference":
        pytest.skip("the reference writes the textbook 1 - y*y (its tests use float64)")
    p = np.concatenate([np.linspace(3, 8, 11), -np.linspace(3, 8, 11)])
    n = p.size
    x = np.ones((1, 1, 1), dtype)
    params = (p[:, None].astype(dtype), np.zeros((n, n), dtype), np.zeros(n, dtype),
              np.zeros(n, dtype))
    out = fastrnn.rnn_forward(x, None, *params, training=True, backend=backend)
    grads = fastrnn.rnn_backward(out.workspace, np.ones((1, 1, n), dtype))
    y = out.y[0, 0].astype(np.float64)
    assert np.all(np.abs(y) < 1)                   # saturated but not rounded to +-1
    exact = (1 - y) * (1 + y)
    rel = np.abs(grads.dbias_ih.astype(np.float64) - exact) / exact
    assert rel.max() <= 4 * np.finfo(dtype).eps, rel.max()


def test_auto_is_the_fastest_available():
    x, states, params, _, _ = make_case("gru", (2, 2, 3, 4), np.float64)
    out = run_forward("gru", "auto", x, states, params, training=True)
    assert out.workspace.backend == fastrnn.available_backends()[0]


def test_required_backends_are_available():
    """Set FASTRNN_REQUIRE_BACKENDS=cython,numba in CI so a failed build cannot
    silently shrink the set of tested backends."""
    required = [n for n in os.environ.get("FASTRNN_REQUIRE_BACKENDS", "").split(",") if n]
    if not required:
        pytest.skip("FASTRNN_REQUIRE_BACKENDS not set")
    from fastrnn import _backends
    missing = {n: _backends._errors.get(n) for n in required
               if n not in fastrnn.available_backends()}
    assert not missing


# ----------------------------------------------------------- optional arguments

@dtype_cases
@cell_cases
def test_no_biases_equals_zero_biases(backend, cell, dtype):
    x, states, params, dy, dstates = make_case(cell, (4, 3, 5, 6), dtype)
    w_ih, w_hh, b_ih, b_hh = params
    kw = dict(lengths=make_lengths("mixed", 4, 3))
    out, grads = forward_backward(cell, backend, x, states, (w_ih, w_hh, None, None),
                                  dy, dstates, **kw)
    zero = np.zeros_like(b_ih)
    z_out, z_grads = forward_backward(cell, backend, x, states, (w_ih, w_hh, zero, zero),
                                      dy, dstates, **kw)
    rtol = RTOL[np.dtype(dtype)]
    assert_results_equal(out, z_out, exact=False, rtol=rtol)
    got, expected = arrays_of(grads), arrays_of(z_grads)
    for name in ("dbias_ih", "dbias_hh"):
        assert got.pop(name) is None and expected.pop(name) is not None
    for name, e in expected.items():
        assert_close(got[name], e, rtol, name)


@pytest.mark.parametrize("missing", ["dy", "dh_n", "dstates", "both"])
@dtype_cases
@cell_cases
def test_none_output_gradients_are_zero(backend, cell, dtype, missing):
    x, states, params, dy, dstates = make_case(cell, (4, 3, 5, 6), dtype)
    if missing in ("dy", "both"):
        dy = None
    if missing in ("dstates", "both"):
        dstates = tuple(None for _ in dstates)
    if missing == "dh_n":                   # the LSTM keeps dc_n
        dstates = (None,) + dstates[1:]
    out = run_forward(cell, backend, x, states, params, training=True,
                      lengths=make_lengths("mixed", 4, 3))
    got = run_backward(cell, out.workspace, dy, dstates)
    zeros = run_backward(cell, out.workspace,
                         np.zeros_like(out.y) if dy is None else dy,
                         tuple(np.zeros_like(s) if d is None else d
                               for d, s in zip(dstates, final_states(out))))
    assert_results_equal(got, zeros, exact=False, rtol=RTOL[np.dtype(dtype)])
    if missing == "both":
        for name, a in arrays_of(got).items():
            assert a.shape == arrays_of(zeros)[name].shape and not np.any(a), name


# ------------------------------------------------------------ memory layouts

def strided(a):
    """The same values as a non-contiguous view: every other element of a bigger array."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def transposed(a):
    """The same values as a view whose axes 0 and 1 are swapped in memory."""
    return np.ascontiguousarray(a.swapaxes(0, 1)).swapaxes(0, 1)


@dtype_cases
@cell_cases
def test_noncontiguous_inputs_give_identical_results(backend, cell, dtype):
    """The kernels see C-contiguous copies of the same values, so the results are
    bitwise identical."""
    x, states, params, dy, dstates = make_case(cell, (5, 3, 4, 6), dtype)
    lengths = make_lengths("mixed", 5, 3)
    expected = forward_backward(cell, backend, x, states, params, dy, dstates,
                                lengths=lengths, reverse=True)
    w_ih, w_hh, b_ih, b_hh = params
    odd_states = (strided(states[0]),) + tuple(np.asfortranarray(s) for s in states[1:])
    reversed_view = np.ascontiguousarray(b_hh[::-1])[::-1]          # negative stride
    odd_params = (np.asfortranarray(w_ih), np.asfortranarray(w_hh), strided(b_ih), reversed_view)
    odd_dstates = tuple(np.asfortranarray(d) for d in dstates)
    odd = (transposed(x), odd_states, odd_params, transposed(dy), odd_dstates, strided(lengths))
    for a in (odd[0], odd[3], odd[5]) + odd_states + odd_params + odd_dstates:
        assert not a.flags.c_contiguous
    got = forward_backward(cell, backend, *odd[:5], lengths=odd[5], reverse=True)
    for a, e in zip(got, expected):
        assert_results_equal(a, e)


@dtype_cases
@cell_cases
def test_readonly_inputs_work_and_are_not_modified(backend, cell, dtype):
    x, states, params, dy, dstates = make_case(cell, (5, 3, 4, 6), dtype)
    lengths = make_lengths("mixed", 5, 3)
    args = (x, states, params, dy, dstates)
    expected = forward_backward(cell, backend, *args, lengths=lengths)

    flat = [x, *states, *params, dy, *dstates, lengths]
    copies = [a.copy() for a in flat]
    for a in flat:
        a.flags.writeable = False
    got = forward_backward(cell, backend, *args, lengths=lengths)
    for a, e in zip(got, expected):
        assert_results_equal(a, e)
    for a, c in zip(flat, copies):
        np.testing.assert_array_equal(a, c)


@cell_cases
def test_backward_twice_gives_identical_results(backend, cell):
    x, states, params, dy, dstates = make_case(cell, (5, 3, 4, 6), np.float64)
    out = run_forward(cell, backend, x, states, params, training=True,
                      lengths=make_lengths("mixed", 5, 3))
    first = run_backward(cell, out.workspace, dy, dstates)
    first_copy = type(first)(*(None if a is None else a.copy() for a in first))
    second = run_backward(cell, out.workspace, dy, dstates)
    assert_results_equal(second, first_copy)
    assert_results_equal(first, first_copy)     # the second call did not overwrite the first


@cell_cases
def test_modifying_outputs_does_not_change_backward(backend, cell):
    """y and the final states belong to the caller: writing into them must not
    corrupt the workspace."""
    x, states, params, dy, dstates = make_case(cell, (5, 3, 4, 6), np.float64)
    out = run_forward(cell, backend, x, states, params, training=True)
    expected = run_backward(cell, out.workspace, dy, dstates)
    for a in (out.y,) + final_states(out):
        a[...] = 1e3
    assert_results_equal(run_backward(cell, out.workspace, dy, dstates), expected)


@pytest.mark.parametrize("T", [3, 0], ids=lambda T: f"T{T}")
@cell_cases
def test_results_do_not_share_memory_with_arguments(backend, cell, T):
    x, states, params, dy, dstates = make_case(cell, (T, 2, 4, 5), np.float64)
    out, grads = forward_backward(cell, backend, x, states, params, dy, dstates)
    arguments = (x,) + states + params + (dy,) + dstates
    for name, r in {**arrays_of(out), **arrays_of(grads)}.items():
        assert not any(np.shares_memory(r, a) for a in arguments), name


# --------------------------------------------------------------- non-finite

@direction_cases
@cell_cases
def test_nan_in_x_propagates_to_its_sequence_only(backend, cell, reverse):
    T, B, I, H = 5, 3, 4, 6
    x, states, params, dy, dstates = make_case(cell, (T, B, I, H), np.float64)
    clean_out, clean_grads = forward_backward(cell, backend, x, states, params, dy, dstates,
                                              reverse=reverse)
    t0, b0 = 2, 1
    x = x.copy()
    x[t0, b0, 0] = np.nan
    with np.errstate(invalid="ignore"):
        out, grads = forward_backward(cell, backend, x, states, params, dy, dstates,
                                      reverse=reverse)

    after = slice(None, t0 + 1) if reverse else slice(t0, None)   # steps visited from t0 on
    before = slice(t0 + 1, None) if reverse else slice(None, t0)
    assert np.all(np.isnan(out.y[after, b0]))
    for s in final_states(out):
        assert np.all(np.isnan(s[b0]))
    others = [b for b in range(B) if b != b0]
    rtol = RTOL[np.dtype(np.float64)]
    assert_close(out.y[before, b0], clean_out.y[before, b0], rtol, "y before the NaN")
    assert_close(out.y[:, others], clean_out.y[:, others], rtol, "y of other sequences")
    assert_close(grads.dx[:, others], clean_grads.dx[:, others], rtol, "dx of other sequences")
    for a, e in zip(state0_grads(grads), state0_grads(clean_grads)):
        assert_close(a[others], e[others], rtol, "dstate0 of other sequences")


@direction_cases
@cell_cases
def test_nonfinite_padding_does_not_reach_the_outputs(backend, cell, reverse):
    """Padding is never read: NaN/inf there leave y and the final states unchanged."""
    T, B, I, H = 5, 3, 4, 6
    x, states, params, _, _ = make_case(cell, (T, B, I, H), np.float64)
    lengths = make_lengths("mixed", T, B)
    expected = run_forward(cell, backend, x, states, params, lengths=lengths, reverse=reverse)
    pad = np.arange(T)[:, None] >= lengths[None, :]
    x = x.copy()
    x[pad] = np.nan
    x[pad.nonzero()[0][0], pad.nonzero()[1][0]] = np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        got = run_forward(cell, backend, x, states, params, lengths=lengths, reverse=reverse)
    assert_results_equal(got, expected)


@direction_cases
@cell_cases
def test_nonfinite_padding_does_not_reach_the_gradients(backend, cell, reverse):
    """Padding receives zero gradient and contributes none, even if it holds NaN."""
    T, B, I, H = 5, 3, 4, 6
    x, states, params, dy, dstates = make_case(cell, (T, B, I, H), np.float64)
    lengths = make_lengths("mixed", T, B)
    kw = dict(lengths=lengths, reverse=reverse)
    expected = forward_backward(cell, backend, x, states, params, dy, dstates, **kw)[1]
    pad = np.arange(T)[:, None] >= lengths[None, :]
    x = x.copy()
    x[pad] = np.nan
    with np.errstate(invalid="ignore"):
        got = forward_backward(cell, backend, x, states, params, dy, dstates, **kw)[1]
    assert_results_equal(got, expected)


# ------------------------------------------------------------------ empty

@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (4, 0, 4, 5), (0, 0, 4, 5)],
                         ids=["T0", "B0", "T0B0"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["", "lengths"])
@dtype_cases
@cell_cases
def test_empty_batch_or_sequence(backend, cell, dtype, shape, with_lengths):
    T, B, I, H = shape
    x, states, params, dy, dstates = make_case(cell, shape, dtype)
    lengths = np.zeros(B, dtype=np.int64) if with_lengths else None
    out, grads = forward_backward(cell, backend, x, states, params, dy, dstates,
                                  lengths=lengths)
    assert out.y.shape == (T, B, H) and out.y.dtype == dtype
    for s0, s_n in zip(states, final_states(out)):
        assert s_n.shape == (B, H) and s_n.dtype == dtype
        np.testing.assert_array_equal(s_n, s0)                 # no step taken
    assert grads.dx.shape == (T, B, I) and grads.dx.dtype == dtype
    for d_n, d0 in zip(dstates, state0_grads(grads)):
        assert d0.shape == (B, H) and d0.dtype == dtype
        np.testing.assert_array_equal(d0, d_n)
    for p, d in zip(params, param_grads(grads)):
        assert d.shape == p.shape and d.dtype == dtype
        assert not np.any(d)


def test_kernel_build_choice():
    """FASTRNN_ISA picks the build of the Cython kernels; a bad value is an error."""
    if "cython" not in fastrnn.available_backends():
        pytest.skip("the cython backend is not built")
    from fastrnn import _cython_backend
    isa, lstm, gru, rnn = _cython_backend._kernel_modules("baseline")
    assert isa == "baseline"
    assert [m.__name__ for m in (lstm, gru, rnn)] == [
        "fastrnn._ext.lstm", "fastrnn._ext.gru", "fastrnn._ext.rnn"]
    with pytest.raises(ValueError, match="FASTRNN_ISA: expected one of 'auto', 'x86-64-v4'"):
        _cython_backend._kernel_modules("avx512")
    runnable = dict(_cython_backend.runnable_builds())
    assert "baseline" in runnable
    assert _cython_backend._kernel_modules("auto")[0] == next(iter(runnable))
    for isa, suffix, _ in _cython_backend._BUILDS:
        if isa in runnable:
            assert _cython_backend._kernel_modules(isa)[1].__name__ == f"fastrnn._ext.lstm{suffix}"
        else:
            with pytest.raises(RuntimeError, match=f"FASTRNN_ISA={isa}, but"):
                _cython_backend._kernel_modules(isa)
