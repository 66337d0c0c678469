"""The backward's weight gradients in register tiles (``weight_gradient`` in
src_ext/_rnn_common.pxd, src_ext/_weight_gradient.h, ``WGRAD_TILES_MAX_N`` in
the Cython backend) against the BLAS product they replace: both right against
the reference, every gradient; the same bits on one thread and two, with the
GEMMs after the time loop in parts on a team; the switch takes effect.

The tiles take I or H of a multiple of 32 (G of 8) up to the limit, in the
x86-64-v4 build; other builds run BLAS either way, which these tests then
check twice.
"""
import numpy as np
import pytest

import fastrnn
from conftest import (RTOL, assert_results_equal, make_lengths, make_params,
                      make_projected_params, make_projected_states, make_states, make_x,
                      run_backward, run_projected_forward)
from fastrnn import _parallel

cb = pytest.importorskip("fastrnn._cython_backend", reason="the Cython extension is not built")

F32 = np.dtype(np.float32)
FORWARD = {"rnn_tanh": fastrnn.rnn_forward, "lstm": fastrnn.lstm_forward,
           "gru": fastrnn.gru_forward}
# T*B rows under one block of 64, exactly one, and several with a partial
# last one; I and H tiled (32, 64, 96), or one of them not (I = 33, H = 40)
SHAPES = [(5, 3, 32, 32), (16, 4, 64, 32), (37, 5, 96, 64), (9, 23, 33, 32), (11, 7, 64, 40)]


def run(cell, x, states, params, lengths, threads, backend="cython"):
    """A training forward's result and its backward's for a fixed dy."""
    before = _parallel.get_num_threads()
    _parallel.set_num_threads(threads)
    try:
        out = FORWARD[cell](x, *states, *params, lengths=lengths, backend=backend,
                            training=True)
        dy = make_x(*out.y.shape, x.dtype, seed=9)
        return [out, run_backward(cell, out.workspace, dy)]
    finally:
        _parallel.set_num_threads(before)


def as_f32(arrays):
    return [a.astype(np.float32) for a in arrays]


@pytest.mark.parametrize("tiles", [True, False], ids=["tiles", "blas"])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("cell", sorted(FORWARD))
def test_both_weight_gradients_match_the_reference(monkeypatch, cell, T, B, I, H, tiles):
    monkeypatch.setattr(cb, "WGRAD_TILES_MAX_N", 128 if tiles else 0)
    x64, s64, p64 = make_x(T, B, I), make_states(cell, B, H), make_params(cell, I, H)
    lengths = make_lengths("mixed", T, B)
    f32 = as_f32((x64, *s64, *p64))
    n = len(s64)
    got = run(cell, f32[0], f32[1:1 + n], f32[1 + n:], lengths, 2)
    want = run(cell, x64, s64, p64, lengths, 2, backend="reference")
    for g, w in zip(got, want):
        assert_results_equal(g, w, exact=False, rtol=RTOL[F32])


@pytest.mark.parametrize("cell", sorted(FORWARD))
def test_tiles_in_gradient_parts_give_the_same_bits_on_any_team(monkeypatch, cell):
    """An unsplit backward's GEMMs in two parts (rows of the weight gradients)
    on a team of two or on one thread: each part's tiles sum the same rows in
    the same order."""
    monkeypatch.setattr(cb, "GRADIENT_PARTS_MIN_MACS", 0)
    monkeypatch.setattr(cb, "WGRAD_TILES_MAX_N", 128)
    T, B, I, H = 70, 3, 64, 32            # 210 rows: four blocks; B = 3: no batch split
    assert len(_parallel.parts(B, T, I, H, 4)) == 1
    x, states = make_x(T, B, I, np.float32), make_states(cell, B, H, np.float32)
    params = make_params(cell, I, H, np.float32)
    calls = []
    backward = cb.backward
    monkeypatch.setattr(cb, "backward",
                        lambda *a, **k: (calls.append(k.get("grad_parts")), backward(*a, **k))[1])
    two = run(cell, x, states, params, None, 2)
    one = run(cell, x, states, params, None, 1)
    assert calls == [2, 2]
    for a, b in zip(two, one):
        assert_results_equal(a, b)


@pytest.mark.skipif(cb.ISA != "x86-64-v4", reason="only the x86-64-v4 build has the tiles")
def test_the_switch_takes_effect():
    """Over 4000 rows the tiles add each value's rows in order, OpenBLAS in
    its blocks: the weight gradients' bits differ, the others' do not."""
    T, B, I, H = 500, 8, 64, 64
    x, states = make_x(T, B, I, np.float32), make_states("lstm", B, H, np.float32)
    params = make_params("lstm", I, H, np.float32)
    results = []
    for limit in (0, 128):
        old, cb.WGRAD_TILES_MAX_N = cb.WGRAD_TILES_MAX_N, limit
        try:
            results.append(run("lstm", x, states, params, None, 2)[1])
        finally:
            cb.WGRAD_TILES_MAX_N = old
    blas, tiles = results
    assert not np.array_equal(blas.dweight_ih, tiles.dweight_ih)
    assert not np.array_equal(blas.dweight_hh, tiles.dweight_hh)
    np.testing.assert_array_equal(blas.dx, tiles.dx)
    np.testing.assert_allclose(tiles.dweight_ih, blas.dweight_ih, rtol=1e-4, atol=1e-4)
    # and dW_hr of a projected LSTM (n = H = 64, G = P = 16)
    P = 16
    states = make_projected_states(B, H, P, np.float32)
    params = make_projected_params(I, H, P, np.float32)
    dy = make_x(T, B, P, np.float32, seed=9)
    hr = []
    for limit in (0, 128):
        old, cb.WGRAD_TILES_MAX_N = cb.WGRAD_TILES_MAX_N, limit
        try:
            out = run_projected_forward("cython", x, states, params, training=True)
            hr.append(run_backward("lstm", out.workspace, dy).dweight_hr)
        finally:
            cb.WGRAD_TILES_MAX_N = old
    assert not np.array_equal(hr[0], hr[1])


@pytest.mark.parametrize("tiles", [True, False], ids=["tiles", "blas"])
def test_the_projected_lstm_weight_gradients_match_the_reference(monkeypatch, tiles):
    """With ``weight_hr``: dW_hr sums dh_total^T m over the rows (G = P = 16,
    n = H = 64: tiles) as dW_ih does (n = I = 32); dW_hh's n = P = 16 stays
    with BLAS. 140 rows: three blocks, the last partial."""
    monkeypatch.setattr(cb, "WGRAD_TILES_MAX_N", 128 if tiles else 0)
    T, B, I, H, P = 35, 4, 32, 64, 16
    x64 = make_x(T, B, I)
    s64, p64 = make_projected_states(B, H, P), make_projected_params(I, H, P)
    dy64 = make_x(T, B, P, seed=9)
    got_out = run_projected_forward("cython", x64.astype(np.float32), as_f32(s64), as_f32(p64),
                                    training=True)
    got = run_backward("lstm", got_out.workspace, dy64.astype(np.float32))
    want_out = run_projected_forward("reference", x64, s64, p64, training=True)
    want = run_backward("lstm", want_out.workspace, dy64)
    assert got.dweight_hr is not None
    assert_results_equal(got, want, exact=False, rtol=RTOL[F32])
