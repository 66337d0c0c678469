"""The input projections through W_ih^T's packed panels (``project_columns``
in src_ext/_rnn_common.pxd, ``PROJECT_PACKED`` in the Cython backend), the
bias added as each value is stored, against the BLAS projection they replace:
both right against the reference, outputs and every gradient; the panels
packed once and shared by a split batch's parts; a split batch's rows the
bits of the whole batch's; the size rule.

Most other tests' shapes are small enough for the panels; here the BLAS
projection (``PROJECT_PACKED_MAX_BYTES`` = 0) is checked too.
"""
import numpy as np
import pytest

import fastrnn
from conftest import (RTOL, assert_results_equal, make_lengths, make_params, make_states,
                      make_x, run_backward)
from fastrnn import _parallel

cb = pytest.importorskip("fastrnn._cython_backend", reason="the Cython extension is not built")

F32 = np.dtype(np.float32)
FORWARD = {"rnn_tanh": fastrnn.rnn_forward, "lstm": fastrnn.lstm_forward,
           "gru": fastrnn.gru_forward}
# T >= PREPARE_MIN_T, so W_hh is packed; odd I (past the 4-step unroll and
# under it), G*H on and off whole panels; B = 9 splits the batch, B = 1 does not
SHAPES = [(6, 9, 13, 10), (5, 1, 3, 16), (4, 9, 37, 7), (7, 2, 1, 33)]


def run(cell, x, states, params, lengths, threads, training, backend="cython"):
    """The forward's result, and with ``training`` its backward's for a fixed dy."""
    before = _parallel.get_num_threads()
    _parallel.set_num_threads(threads)
    try:
        out = FORWARD[cell](x, *states, *params, lengths=lengths, backend=backend,
                            training=training)
        if not training:
            return [out]
        dy = make_x(*out.y.shape, x.dtype, seed=9)
        return [out, run_backward(cell, out.workspace, dy)]
    finally:
        _parallel.set_num_threads(before)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("panels", [True, False], ids=["panels", "blas"])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("cell", sorted(FORWARD))
def test_both_projections_match_the_reference(monkeypatch, cell, T, B, I, H, panels, training):
    monkeypatch.setattr(cb, "PROJECT_PACKED_MAX_BYTES", 1 << 40 if panels else 0)
    x64, s64, p64 = make_x(T, B, I), make_states(cell, B, H), make_params(cell, I, H)
    lengths = make_lengths("mixed", T, B)
    f32 = [a.astype(np.float32) for a in (x64, *s64, *p64)]
    n = len(s64)
    prepared = []
    prepare = cb.prepare_forward
    monkeypatch.setattr(cb, "prepare_forward",
                        lambda *a: (prepared.append(prepare(*a)), prepared[-1])[1])
    got = run(cell, f32[0], f32[1:1 + n], f32[1 + n:], lengths, 2, training)
    assert len(prepared) == 1 and ("packed_ih" in prepared[0]) == panels
    want = run(cell, x64, s64, p64, lengths, 2, training, backend="reference")
    for g, w in zip(got, want):
        assert_results_equal(g, w, exact=False, rtol=RTOL[F32])


@pytest.mark.parametrize("cell", sorted(FORWARD))
def test_a_split_batch_shares_the_panels_and_gets_the_whole_batchs_bits(monkeypatch, cell):
    """The parts of a split batch project through one packing of W_ih^T; a
    value sums over I in order whichever rows a part holds, so the split
    call's outputs are the bits of the same call on one thread."""
    T, B, I, H = 6, 9, 21, 24
    x, states = make_x(T, B, I, np.float32), make_states(cell, B, H, np.float32)
    params = make_params(cell, I, H, np.float32)
    packs = []
    pack = cb._pack
    monkeypatch.setattr(cb, "_pack", lambda w, *a: (packs.append(w), pack(w, *a))[1])
    split = run(cell, x, states, params, None, 2, False)
    assert [w is params[0] for w in packs] == [False, True]     # W_hh^T, then W_ih^T: once
    one = run(cell, x, states, params, None, 1, False)
    assert_results_equal(split[0], one[0])


def test_the_panels_only_up_to_their_size_limit(monkeypatch):
    T, B, I, H = 6, 3, 64, 32                               # W_ih^T: 4 * 32 * 64 * 4 bytes
    params = make_params("lstm", I, H, np.float32)
    monkeypatch.setattr(cb, "PROJECT_PACKED_MAX_BYTES", 4 * H * I * 4)
    assert "packed_ih" in cb.prepare_forward("lstm", F32, T, B, params)
    monkeypatch.setattr(cb, "PROJECT_PACKED_MAX_BYTES", 4 * H * I * 4 - 1)
    assert "packed_ih" not in cb.prepare_forward("lstm", F32, T, B, params)
    # nothing to pack: no inputs, float64, or W_hh not packed (a short call)
    monkeypatch.setattr(cb, "PROJECT_PACKED_MAX_BYTES", 1 << 40)
    no_inputs = make_params("lstm", 0, H, np.float32)
    assert "packed_ih" not in cb.prepare_forward("lstm", F32, T, B, no_inputs)
    f64 = make_params("lstm", I, H, np.float64)
    assert "packed_ih" not in cb.prepare_forward("lstm", np.dtype(np.float64), T, B, f64)
    assert cb.prepare_forward("lstm", F32, cb.PREPARE_MIN_T - 1, B, params) == {}
