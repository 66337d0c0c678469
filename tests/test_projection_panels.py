"""The input projections through W_ih^T's packed panels (``project_columns``
in src_ext/_rnn_common.pxd, ``PROJECT_PACKED`` in the Cython backend), the
bias added as each value is stored, against the BLAS projection they replace:
both right against the reference, outputs and every gradient; the panels
packed once and shared by a split batch's parts; a split batch's rows the
bits of the whole batch's; the size rule, which inference relaxes for calls of
many rows.

Most other calls that pack W_hh take the panels; here the BLAS projection
(``PROJECT_PACKED`` off) is checked too.
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


def record_prepared(monkeypatch):
    """The list ``prepare_forward``'s results go into, call by call."""
    prepared = []
    prepare = cb.prepare_forward
    monkeypatch.setattr(cb, "prepare_forward",
                        lambda *a, **k: (prepared.append(prepare(*a, **k)), prepared[-1])[1])
    return prepared


def run_against_reference(monkeypatch, cell, T, B, I, H, lengths, training):
    """A float32 call on two threads, checked against the float64
    reference's results; returns what its forward was prepared with."""
    x64, s64, p64 = make_x(T, B, I), make_states(cell, B, H), make_params(cell, I, H)
    f32 = [a.astype(np.float32) for a in (x64, *s64, *p64)]
    n = len(s64)
    prepared = record_prepared(monkeypatch)
    got = run(cell, f32[0], f32[1:1 + n], f32[1 + n:], lengths, 2, training)
    want = run(cell, x64, s64, p64, lengths, 2, training, backend="reference")
    for g, w in zip(got, want):
        assert_results_equal(g, w, exact=False, rtol=RTOL[F32])
    return prepared


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("panels", [True, False], ids=["panels", "blas"])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("cell", sorted(FORWARD))
def test_both_projections_match_the_reference(monkeypatch, cell, T, B, I, H, panels, training):
    monkeypatch.setattr(cb, "PROJECT_PACKED", panels)
    monkeypatch.setattr(cb, "PROJECT_PACKED_MAX_BYTES", 1 << 40)
    prepared = run_against_reference(monkeypatch, cell, T, B, I, H,
                                     make_lengths("mixed", T, B), training)
    assert len(prepared) == 1 and ("packed_ih" in prepared[0]) == panels


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


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_the_size_rule(monkeypatch, training):
    """W_ih^T's panels where they take at most PROJECT_PACKED_MAX_BYTES; past
    that, for inference over at least PROJECT_PACKED_MIN_ROWS rows (T * B)."""
    T, B, I, H = 6, 3, 64, 32                               # W_ih^T: 4 * 32 * 64 * 4 bytes
    params = make_params("lstm", I, H, np.float32)

    def panels():
        return "packed_ih" in cb.prepare_forward("lstm", F32, T, B, params, training)
    monkeypatch.setattr(cb, "PROJECT_PACKED_MIN_ROWS", T * B + 1)
    monkeypatch.setattr(cb, "PROJECT_PACKED_MAX_BYTES", 4 * H * I * 4)
    assert panels()
    monkeypatch.setattr(cb, "PROJECT_PACKED_MAX_BYTES", 4 * H * I * 4 - 1)
    assert not panels()
    monkeypatch.setattr(cb, "PROJECT_PACKED_MIN_ROWS", T * B)
    assert panels() == (not training)
    # nothing to pack: no inputs, float64, W_hh not packed (a short call), or switched off
    monkeypatch.setattr(cb, "PROJECT_PACKED_MAX_BYTES", 1 << 40)
    no_inputs = make_params("lstm", 0, H, np.float32)
    assert "packed_ih" not in cb.prepare_forward("lstm", F32, T, B, no_inputs, training)
    f64 = make_params("lstm", I, H, np.float64)
    assert "packed_ih" not in cb.prepare_forward("lstm", np.dtype(np.float64), T, B, f64,
                                                 training)
    assert cb.prepare_forward("lstm", F32, cb.PREPARE_MIN_T - 1, B, params, training) == {}
    monkeypatch.setattr(cb, "PROJECT_PACKED", False)
    assert not panels()


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_a_pipelined_call_with_wide_inputs_takes_the_panels(monkeypatch, training):
    """Past the byte limit and short of the rows, a call whose projections
    are pipelined takes the panels where I >= PIPELINED_PACKED_MIN_I_OVER_H * H
    (OpenBLAS would pack W_ih^T again for every chunk)."""
    T, B, H = 6, 3, 16
    monkeypatch.setattr(cb, "PROJECT_PACKED_MAX_BYTES", 16)
    monkeypatch.setattr(cb, "PROJECT_PACKED_MIN_ROWS", T * B + 1)
    monkeypatch.setattr(cb, "PIPELINED_PACKED_MIN_I_OVER_H", 2)

    def panels(I, pipelined):
        params = make_params("lstm", I, H, np.float32)
        return "packed_ih" in cb.prepare_forward("lstm", F32, T, B, params, training,
                                                 pipelined)
    assert panels(2 * H, True) and panels(3 * H + 1, True)
    assert not panels(2 * H - 1, True) and not panels(2 * H, False)
    monkeypatch.setattr(cb, "PIPELINED_PACKED_MIN_I_OVER_H", None)
    assert not panels(4 * H, True)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("cell", sorted(FORWARD))
def test_a_pipelined_call_projects_through_the_panels_right(monkeypatch, cell, training):
    """The same through a whole call whose projections are pipelined (two
    threads, chunks of 2 steps): the panels it was prepared with, and the
    reference's results."""
    T, B, I, H = 9, 1, 40, 16
    monkeypatch.setattr(cb, "PROJECT_PACKED_MAX_BYTES", 16)
    monkeypatch.setattr(cb, "PROJECT_PACKED_MIN_ROWS", 1 << 62)
    monkeypatch.setattr(cb, "PIPELINE_MIN_MACS", 0)
    monkeypatch.setattr(cb, "PIPELINE_CHUNK_ROWS", 2)
    monkeypatch.setattr(cb, "PIPELINE_MIN_CHUNKS", 2)
    prepared = run_against_reference(monkeypatch, cell, T, B, I, H, None, training)
    assert len(prepared) == 1 and "packed_ih" in prepared[0]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split batch"])
@pytest.mark.parametrize("cell", sorted(FORWARD))
def test_a_call_past_the_size_limit_projects_by_its_mode(monkeypatch, cell, split):
    """Past the byte limit, with rows enough, an inference call, split or
    whole, packs W_ih^T and a training call does not: what each call's
    forward was prepared with (a split batch's with its largest part's B)."""
    T, B, I, H = (6, 9, 64, 96) if split else (6, 3, 40, 16)
    G = {"lstm": 4, "gru": 3}.get(cell, 1)
    assert len(_parallel.parts(B, T, I, H, G)) == (2 if split else 1)
    monkeypatch.setattr(cb, "PROJECT_PACKED_MAX_BYTES", 16)
    monkeypatch.setattr(cb, "PROJECT_PACKED_MIN_ROWS", T * (B + 1) // 2 if split else T * B)
    x, states = make_x(T, B, I, np.float32), make_states(cell, B, H, np.float32)
    params = make_params(cell, I, H, np.float32)
    prepared = record_prepared(monkeypatch)
    for training in (False, True):
        prepared.clear()
        run(cell, x, states, params, None, 2, training)
        assert len(prepared) == 1 and ("packed_ih" in prepared[0]) == (not training)
