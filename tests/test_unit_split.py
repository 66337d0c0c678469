"""The LSTM and GRU forwards (inference, and training's, which keeps every
step for the backward) with their hidden units split across a thread team
(``lstm_forward_units`` in src_ext/lstm.pyx, ``gru_forward_units`` in
src_ext/gru.pyx, chosen by ``_cython_backend.unit_parts``), and short
inference calls of every cell, the vanilla RNN's too (``rnn_forward_units``
in src_ext/rnn.pyx), split without panels: right against the reference, the
same bits on any thread count, and chosen only where it applies.

The rule normally picks it only in the x86-64-v4 build and for a large W_hh;
the fixture lowers the threshold so that small odd shapes take it on every
build.
"""
import functools
import threading

import numpy as np
import pytest

import fastrnn
from conftest import (RTOL, assert_results_equal, make_layer, make_lengths, make_params,
                      make_states, make_x, record_keyword, run_backward)
from fastrnn import _parallel

cb = pytest.importorskip("fastrnn._cython_backend", reason="the Cython extension is not built")

F32 = np.dtype(np.float32)
# H a multiple of the panel width (16), with one part of one panel and one of
# two (H = 48); B from 1 to past the batch split's threshold
SHAPES = [(6, 1, 9, 32), (5, 3, 7, 48), (4, 9, 5, 64), (7, 16, 12, 32), (9, 13, 33, 16)]


@pytest.fixture
def unit_split_everywhere(monkeypatch):
    """Split the units of every LSTM and GRU call the rule allows at all."""
    monkeypatch.setattr(cb, "UNIT_SPLIT_MIN_BYTES", {256: 0})
    calls = record_keyword(monkeypatch, cb, "forward", "unit_parts", 0)
    threads = _parallel.get_num_threads()
    yield calls
    _parallel.set_num_threads(threads)


FORWARD = {"lstm": fastrnn.lstm_forward, "gru": fastrnn.gru_forward,
           "rnn_tanh": functools.partial(fastrnn.rnn_forward, nonlinearity="tanh"),
           "rnn_relu": functools.partial(fastrnn.rnn_forward, nonlinearity="relu")}


def run(cell, x, states, params, lengths, reverse, threads, backend="cython", dy=None):
    """The forward's result; with ``dy``, a training forward's and its backward's."""
    _parallel.set_num_threads(threads)
    out = FORWARD[cell](x, *states, *params, lengths=lengths, reverse=reverse, backend=backend,
                        training=dy is not None)
    if dy is None:
        return [out]
    return [out, run_backward(cell, out.workspace, dy)]


@pytest.mark.parametrize("mode", ["inference", "training"])
@pytest.mark.parametrize("lengths_kind", [None, "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_unit_split_matches_reference_and_any_thread_count(unit_split_everywhere, cell, T, B, I,
                                                           H, reverse, lengths_kind, mode):
    x, states, params = make_x(T, B, I), make_states(cell, B, H), make_params(cell, I, H)
    dy = make_x(T, B, H, seed=7) if mode == "training" else None
    lengths = make_lengths(lengths_kind, T, B)
    n = len(states)
    f32 = [None if a is None else a.astype(np.float32) for a in (x, *states, *params, dy)]
    args = (cell, f32[0], f32[1:1 + n], f32[1 + n:-1], lengths, reverse)
    two = run(*args, threads=2, dy=f32[-1])
    assert unit_split_everywhere == [2], "the call did not take the unit split"
    one = run(*args, threads=1, dy=f32[-1])
    expected = run(cell, x, states, params, lengths, reverse, 2, backend="reference", dy=dy)
    for got, same, want in zip(two, one, expected):
        assert_results_equal(got, same)                      # bit for bit
        assert_results_equal(got, want, exact=False, rtol=RTOL[F32])


@pytest.mark.parametrize("T,B,I,H", [(60, 1, 9, 32), (33, 3, 7, 48)])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_spinning_barrier_gives_the_bits_of_openmps(unit_split_everywhere, monkeypatch, cell,
                                                    T, B, I, H):
    """The team of a unit split meets every step at src_ext/_team.h's
    spinning barrier (``SPIN_BARRIER``) or at OpenMP's. Either way every
    step reads the units the other thread wrote in the step before, so the
    outputs and gradients are the same bits; a barrier that let a thread
    run ahead would read half-written states and differ, from one repetition
    to the next, so the spinning one runs twenty times."""
    x, states, params = make_x(T, B, I), make_states(cell, B, H), make_params(cell, I, H)
    dy = make_x(T, B, H, seed=7)
    f32 = [a.astype(np.float32) for a in (x, *states, *params, dy)]
    n = len(states)
    args = (cell, f32[0], f32[1:1 + n], f32[1 + n:-1], None, False)
    monkeypatch.setattr(cb, "SPIN_BARRIER", False)
    openmp = run(*args, threads=2, dy=f32[-1])
    monkeypatch.setattr(cb, "SPIN_BARRIER", True)
    for _ in range(20):
        spinning = run(*args, threads=2, dy=f32[-1])
        for got, want in zip(spinning, openmp):
            assert_results_equal(got, want)                 # bit for bit
    assert set(unit_split_everywhere) == {2}, "a call did not take the unit split"


def test_unit_split_applies_only_where_it_can(monkeypatch):
    monkeypatch.setattr(cb, "UNIT_SPLIT_MIN_BYTES", {256: 0})
    params = tuple(make_params("lstm", 8, 32, np.float32))
    assert cb.unit_parts("lstm", F32, 10, 4, params, training=False) == 2
    assert cb.unit_parts("lstm", F32, 10, 4, params, training=True) == 2
    # a batch the batch split would split: split the units instead, training's
    # backward too (it splits them the same way)
    assert len(_parallel.parts(32, 10, 8, 32, 4)) == 2
    assert cb.unit_parts("lstm", F32, 10, 32, params, training=False) == 2
    assert cb.unit_parts("lstm", F32, 10, 32, params, training=True) == 2
    assert cb.unit_parts("gru", F32, 10, 4, tuple(make_params("gru", 8, 32, np.float32)),
                         training=False) == 2
    assert cb.unit_parts("rnn_tanh", F32, 10, 4,
                         tuple(make_params("rnn_tanh", 8, 32, np.float32)), training=False) == 0
    assert cb.unit_parts("lstm", np.dtype(np.float64), 10, 4, params, training=False) == 0
    assert cb.unit_parts("lstm", F32, cb.PREPARE_MIN_T - 1, 4, params, training=False) == 0
    assert cb.unit_parts("lstm", F32, 10, 300, params, training=False) == 0  # past 256 rows
    odd = tuple(make_params("lstm", 8, 40, np.float32))                       # 40 % 16 != 0
    assert cb.unit_parts("lstm", F32, 10, 4, odd, training=False) == 0
    projected = params + (np.zeros((16, 32), np.float32),)
    assert cb.unit_parts("lstm", F32, 10, 4, projected, training=False) == 0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_unit_split_rule_in_each_build(cell):
    """Only the x86-64-v4 build splits units, and there by the measured table:
    the grid's latency shape (B = 1, H = 128) and small one (B = 16, H = 512)
    do, its long (B = 8, H = 64) and medium (B = 32, H = 256) do not; in
    inference and training alike."""
    def parts(B, H, training):
        return cb.unit_parts(cell, F32, 100, B, tuple(make_params(cell, H, H, np.float32)),
                             training=training)
    for training in (False, True):
        if cb.ISA != "x86-64-v4":
            assert cb.UNIT_SPLIT_MIN_BYTES is None and parts(1, 128, training) == 0
            continue
        got = [parts(B, H, training) for B, H in ((1, 128), (16, 512), (8, 64), (32, 256))]
        assert got == [2, 2, 0, 0], f"training={training}"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_short_sequences_split_from_smaller_weights(cell):
    """``UNIT_SPLIT_SHORT_MIN_BYTES``: for at most ``UNIT_SPLIT_SHORT_T``
    steps, B = 16 with H = 384 (LSTM W_hh^T 2.25 MiB, GRU 1.69 MiB) splits its
    units; with more steps, or with H = 256, it keeps the batch split."""
    def parts(T, B, H):
        return cb.unit_parts(cell, F32, T, B, tuple(make_params(cell, H, H, np.float32)),
                             training=False)
    if cb.ISA != "x86-64-v4":
        assert cb.UNIT_SPLIT_SHORT_MIN_BYTES is None and parts(25, 16, 384) == 0
        return
    short = cb.UNIT_SPLIT_SHORT_T
    assert parts(short, 16, 384) == 2 and parts(short + 1, 16, 384) == 0
    assert parts(short, 16, 256) == 0                       # 1 MiB or less: never
    assert parts(short, 32, 384) == 0                       # past the table's rows
    assert parts(short + 1, 16, 512) == 2                   # the main table's bound holds


def raw_lstm_forward_args(T, B, I, H):
    """Positional arguments of the raw float32 LSTM forward kernel, zeros."""
    x = np.zeros((T, B, I), np.float32)
    w_ih, w_hh = np.zeros((4 * H, I), np.float32), np.zeros((4 * H, H), np.float32)
    return (x, w_ih, w_hh, np.zeros(4 * H, np.float32), None, False,
            np.empty((1, B, 4 * H), np.float32), np.empty((B, 4 * H), np.float32),
            np.zeros((2, B, H), np.float32), np.zeros((2, B, H), np.float32),
            np.empty((T, B, H), np.float32))


def test_kernel_rejects_unit_parts_it_cannot_run():
    """The raw kernel's ``unit_parts`` needs float32, room for the panels
    its team would pack, and whole panels if it has panels; anything else is
    a clear error, not a crash. (Without panels and without ``pack_here``
    the parts multiply by W_hh itself, H any width.)"""
    kernel = cb._typed(cb._lstm.forward, F32)
    with pytest.raises(ValueError, match="unit_parts needs float32, room for the panels"):
        kernel(*raw_lstm_forward_args(T=4, B=2, I=3, H=16), unit_parts=2, pack_here=True)
    panels = np.zeros(cb._packing.packed_size(24, 96), np.float32)
    with pytest.raises(ValueError, match="H a multiple of 16 with panels"):
        kernel(*raw_lstm_forward_args(T=4, B=2, I=3, H=24), unit_parts=2, packed=panels)


def test_rnn_kernel_rejects_unit_parts_it_cannot_run():
    """The raw RNN kernel splits its units only without panels and with its
    ``gh`` scratch, (B, H): anything else is a clear error."""
    T, B, I, H = 1, 2, 3, 16
    kernel = cb._typed(cb._rnn.forward, F32)
    args = (np.zeros((T, B, I), np.float32), np.zeros((H, I), np.float32),
            np.zeros((H, H), np.float32), np.zeros(H, np.float32), None, False, False,
            np.empty((1, B, H), np.float32), np.zeros((2, B, H), np.float32),
            np.empty((T, B, H), np.float32))
    gh = np.empty((B, H), np.float32)
    y = kernel(*args, unit_parts=2, gh=gh)                  # runs
    for bad in (dict(gh=None), dict(gh=np.empty((B + 1, H), np.float32)),
                dict(gh=gh, packed=np.zeros(cb._packing.packed_size(H, H), np.float32))):
        with pytest.raises(ValueError, match=r"unit_parts needs float32, no panels.*gh \(2, 16\)"):
            kernel(*args, unit_parts=2, **bad)
    assert y is None


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_unit_split_backward_gives_the_bits_of_the_whole_product(unit_split_everywhere,
                                                                 monkeypatch, cell):
    """A training forward that split its units has its backward split them
    too (``lstm_backward_units``, ``gru_backward_units``); each column of
    dh += dG @ W_hh sums as in the whole product, so the gradients are the
    same bits as the backward's ordinary time loop."""
    T, B, I, H = 7, 3, 9, 48
    x, states = make_x(T, B, I, np.float32), make_states(cell, B, H, np.float32)
    params, dy = make_params(cell, I, H, np.float32), make_x(T, B, H, np.float32, seed=7)
    _parallel.set_num_threads(2)
    ws = FORWARD[cell](x, *states, *params, lengths=make_lengths("mixed", T, B),
                       training=True, backend="cython").workspace
    assert unit_split_everywhere == [2] and ws.data["unit_parts"] == 2
    seen = []
    typed = cb._typed

    def spy(kernel, dtype):
        fn = typed(kernel, dtype)

        def call(*args, **kw):
            seen.append(kw.get("unit_parts", 0))
            return fn(*args, **kw)
        return call
    monkeypatch.setattr(cb, "_typed", spy)
    split = run_backward(cell, ws, dy)
    ws.data["unit_parts"] = 0
    whole = run_backward(cell, ws, dy)
    assert seen == [2, 0]
    assert_results_equal(split, whole)


def spy_on_rooms(monkeypatch):
    """Record every room a unit-split call's team packs into, as (room, w, trans),
    each filled with NaN first: a panel left out cannot pass as stale memory
    of an earlier call."""
    rooms = []
    room_to_pack = cb._room_to_pack

    def spy(w_hh, trans, w_ih=None):
        rec = room_to_pack(w_hh, trans, w_ih)
        for key, w in (("packed", w_hh), ("packed_ih", w_ih)):
            if key in rec:
                rec[key][:] = np.nan
                rooms.append((rec[key], w, trans))
        return rec
    monkeypatch.setattr(cb, "_room_to_pack", spy)
    return rooms


def assert_packed_as_pack_would(rooms):
    for packed, w, trans in rooms:
        K, N = (w.shape[1], w.shape[0]) if trans else w.shape
        np.testing.assert_array_equal(packed, cb._pack(w, trans, K, N))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_team_packs_every_panel_the_calling_thread_would(unit_split_everywhere, monkeypatch,
                                                         cell, threads):
    """A unit-split call's team packs W_hh itself (``pack_here``), each thread
    the panels of its own parts: forward and backward, the room it packs into
    ends up byte for byte what ``packing.pack`` writes, and the results are
    the bits of a call packed before its team started (the projection through
    BLAS in both, as a call packed beforehand projects)."""
    T, B, I, H = 6, 2, 5, 48          # H = 48: parts of one panel and of two
    x, states = make_x(T, B, I, np.float32), make_states(cell, B, H, np.float32)
    params, dy = make_params(cell, I, H, np.float32), make_x(T, B, H, np.float32, seed=3)
    monkeypatch.setattr(cb, "PROJECT_PACKED", False)
    rooms = spy_on_rooms(monkeypatch)
    in_team = run(cell, x, states, params, None, False, threads, dy=dy)
    assert [(w is params[1], trans) for _, w, trans in rooms] == [(True, True), (True, False)]
    assert_packed_as_pack_would(rooms)
    monkeypatch.setattr(cb, "PACK_IN_TEAM", False)
    before = run(cell, x, states, params, None, False, threads, dy=dy)
    assert len(rooms) == 2 and unit_split_everywhere == [2, 2]
    for got, want in zip(in_team, before):
        assert_results_equal(got, want)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_team_projects_through_the_panels_it_packs(unit_split_everywhere, monkeypatch, cell,
                                                   threads):
    """With ``PROJECT_PACKED`` a unit-split forward's team also packs W_ih^T
    (``packed_ih``), each thread its parts' columns, byte for byte what
    ``packing.pack`` writes, and projects through those panels: the results
    agree with the BLAS projection's to float32 rounding (the sums run in
    another order), training's gradients included."""
    T, B, I, H = 5, 3, 33, 48         # I = 33: past the panels' 4-step unroll
    x, states = make_x(T, B, I, np.float32), make_states(cell, B, H, np.float32)
    params, dy = make_params(cell, I, H, np.float32), make_x(T, B, H, np.float32, seed=5)
    assert cb.PROJECT_PACKED
    rooms = spy_on_rooms(monkeypatch)
    panels = run(cell, x, states, params, None, False, threads, dy=dy)
    assert [(w is params[0], trans) for _, w, trans in rooms][:2] == [(False, True), (True, True)]
    assert_packed_as_pack_would(rooms)
    monkeypatch.setattr(cb, "PROJECT_PACKED", False)
    blas = run(cell, x, states, params, None, False, threads, dy=dy)
    assert unit_split_everywhere == [2, 2]
    for got, want in zip(panels, blas):
        assert_results_equal(got, want, exact=False, rtol=RTOL[F32])


def test_kernel_packs_on_its_team_only_with_unit_parts():
    """``pack_here`` leaves ``packed`` to the unit split's team: without
    ``unit_parts`` nothing would pack it, so the kernel refuses; and a room
    too small for W_ih^T's panels (``packed_ih``) is refused by name."""
    args = raw_lstm_forward_args(T=4, B=2, I=3, H=16)
    room = np.empty(cb._packing.packed_size(16, 4 * 16), np.float32)
    kernel = cb._typed(cb._lstm.forward, F32)
    with pytest.raises(ValueError, match="pack_here needs unit_parts"):
        kernel(*args, packed=room, pack_here=True)
    room_ih = np.empty(cb._packing.packed_size(3, 4 * 16), np.float32)
    with pytest.raises(ValueError, match="packed_ih must hold at least"):
        kernel(*args, packed=room, unit_parts=2, pack_here=True, packed_ih=room_ih[:-1])



@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_float64_kernel_refuses_w_ih_panels(cell):
    """W_ih^T's panels (``packed_ih``) are float32; a float64 forward projects
    through BLAS and would ignore them, so it refuses them by name instead of
    silently taking another path than the caller asked for."""
    T, B, I, H = 4, 2, 3, 16
    G = {"rnn_tanh": 1, "lstm": 4, "gru": 3}[cell]
    f64 = np.float64
    x, y = np.zeros((T, B, I), f64), np.empty((T, B, H), f64)
    w_ih, w_hh, bias = np.zeros((G * H, I), f64), np.zeros((G * H, H), f64), np.zeros(G * H, f64)
    hs = np.zeros((2, B, H), f64)
    if cell == "rnn_tanh":
        kernel = cb._rnn.forward
        args = (x, w_ih, w_hh, bias, None, False, False, np.empty((T, B, H), f64), hs, y)
    elif cell == "lstm":
        kernel = cb._lstm.forward
        args = (x, w_ih, w_hh, bias, None, False, np.empty((1, B, G * H), f64),
                np.empty((B, G * H), f64), hs, np.zeros((2, B, H), f64), y)
    else:
        kernel = cb._gru.forward
        args = (x, w_ih, w_hh, bias, np.zeros(H, f64), None, False,
                np.empty((1, B, G * H), f64), np.empty((B, G * H), f64), None, hs, y)
    kernel = cb._typed(kernel, np.dtype(f64))
    kernel(*args)                                   # the same call without panels runs
    room_ih = np.empty(cb._packing.packed_size(I, G * H), np.float32)
    with pytest.raises(ValueError, match="packed_ih holds float32 panels, but this call "
                                         "is float64"):
        kernel(*args, packed_ih=room_ih)


@pytest.fixture
def short_split_everywhere(monkeypatch):
    """Split the units of every short inference call the rule allows at all."""
    monkeypatch.setattr(cb, "UNIT_SPLIT_NT_MIN_BYTES", 0)
    calls = record_keyword(monkeypatch, cb, "forward", "unit_parts", 0)
    threads = _parallel.get_num_threads()
    yield calls
    _parallel.set_num_threads(threads)


def test_short_inference_splits_units_without_panels():
    """Fewer than ``PREPARE_MIN_T`` steps: inference of any cell with
    W_hh^T of ``UNIT_SPLIT_NT_MIN_BYTES`` or more and at most
    ``UNIT_SPLIT_NT_MAX_ROWS`` rows (T * B) splits its units, in every build;
    training, float64, projections and more rows do not. H need not be a
    multiple of the panel width (the panels' splits need it)."""
    T = cb.PREPARE_MIN_T - 1
    big = tuple(make_params("lstm", 128, 128, np.float32))        # W_hh^T 256 KiB
    assert cb.UNIT_SPLIT_NT_MIN_BYTES == 192 << 10
    rows = cb.UNIT_SPLIT_NT_MAX_ROWS
    assert rows == 32
    for B in (1, 4, rows // T):
        assert cb.unit_parts("lstm", F32, T, B, big, training=False) == 2
    assert cb.unit_parts("lstm", F32, 1, rows + 1, big, training=False) == 0
    assert cb.unit_parts("lstm", F32, T, rows // T + 1, big, training=False) == 0
    assert cb.unit_parts("lstm", F32, T, 4, big, training=True) == 0
    assert cb.unit_parts("lstm", np.dtype(np.float64), T, 4, big, training=False) == 0
    assert cb.unit_parts("gru", F32, 1, 1, tuple(make_params("gru", 128, 128, np.float32)),
                         training=False) == 2                   # 192 KiB
    assert cb.unit_parts("gru", F32, 1, 1, tuple(make_params("gru", 112, 112, np.float32)),
                         training=False) == 0                   # 147 KiB
    rnn = tuple(make_params("rnn_tanh", 224, 224, np.float32))       # 196 KiB
    assert cb.unit_parts("rnn_tanh", F32, 1, 1, rnn, training=False) == 2
    assert cb.unit_parts("rnn_relu", F32, T, 4, rnn, training=False) == 2
    assert cb.unit_parts("rnn_tanh", F32, T, 4, rnn, training=True) == 0
    assert cb.unit_parts("rnn_tanh", F32, cb.PREPARE_MIN_T, 4, rnn, training=False) == 0
    assert cb.unit_parts("rnn_tanh", F32, 1, 1, tuple(make_params("rnn_tanh", 208, 208,
                                                                  np.float32)),
                         training=False) == 0                   # 169 KiB
    odd = tuple(make_params("lstm", 8, 232, np.float32))           # 232 % 16 != 0
    assert cb.unit_parts("lstm", F32, 1, 1, odd, training=False) == 2  # the tail to the last part
    assert cb.unit_parts("lstm", F32, cb.PREPARE_MIN_T, 1, odd, training=False) == 0  # panels
    projected = big + (np.zeros((16, 128), np.float32),)
    assert cb.unit_parts("lstm", F32, 1, 1, projected, training=False) == 0


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths_kind", [None, "mixed"])
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 9, 32), (2, 5, 7, 48), (3, 9, 5, 64), (1, 32, 12, 16),
                                     (3, 10, 33, 16), (2, 16, 40, 32),
                                     # H off the panel width: the last part takes the tail
                                     (1, 3, 11, 20), (2, 7, 9, 37), (3, 4, 6, 100), (1, 2, 5, 7),
                                     (1, 5, 13, 300)])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_short_unit_split_gives_the_bits_of_the_unsplit_call(short_split_everywhere, monkeypatch,
                                                             cell, T, B, I, H, lengths_kind,
                                                             reverse):
    """A short inference call's units split without panels: the bits of one
    thread's team and of the call not split at all (one core, or the batch
    split from 8 rows), and right against the reference."""
    x, states, params = make_x(T, B, I), make_states(cell, B, H), make_params(cell, I, H)
    lengths = make_lengths(lengths_kind, T, B)
    n = len(states)
    f32 = [a.astype(np.float32) for a in (x, *states, *params)]
    args = (cell, f32[0], f32[1:1 + n], f32[1 + n:], lengths, reverse)
    two = run(*args, threads=2)
    assert short_split_everywhere == [2], "the call did not split its units"
    one = run(*args, threads=1)
    monkeypatch.setattr(cb, "UNIT_SPLIT_NT_MIN_BYTES", None)
    unsplit = run(*args, threads=2)
    assert short_split_everywhere[-1] == 0
    expected = run(cell, x, states, params, lengths, reverse, 2, backend="reference")
    for got, same, whole, want in zip(two, one, unsplit, expected):
        assert_results_equal(got, same)                      # bit for bit
        assert_results_equal(got, whole)
        assert_results_equal(got, want, exact=False, rtol=RTOL[F32])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_frozen_short_calls_split_as_the_layer(cell):
    """A frozen layer's one step at B = 4, H = 256 splits its units as the
    layer's does, without packing anything, and gives the layer's bits."""
    layer = make_layer(cell, 256, 256, rng=0, backend="cython")
    ice = layer.freeze()
    x = np.random.default_rng(0).standard_normal((1, 4, 256)).astype(np.float32)
    for _ in range(2):
        got, want = ice(x), layer(x)
        for a, b in zip([got[0]] + list(got[1]), [want[0]] + list(want[1])):
            np.testing.assert_array_equal(a, b)
    (plan,) = ice._plans.values()
    call = plan.runs[0]
    assert call.unit_parts == 2 and "packed" not in call.options
    prepared = ice._layer._params_cache[0].prepared
    assert not [key for key in prepared if isinstance(key, tuple)]   # no panels, the bias only


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_short_call_after_an_idle_gap_runs_alone_with_the_same_bits(two_threads, monkeypatch,
                                                                    cell):
    """A short unit-split call that comes when no forward call has ended for
    ``IDLE_TEAM_S`` (fastrnn's OpenMP thread has gone to sleep) runs its
    parts on the calling thread (``ForwardCall.team_options``); right after
    another call, on the team. Both give the same bits. Larger calls
    (``IDLE_SOLO_MAX_MACS``), long ones and training keep their team."""
    layer = make_layer(cell, 256, 256, rng=0, backend="cython")
    ice = layer.freeze()
    x = np.random.default_rng(2).standard_normal((1, 2, 256)).astype(np.float32)
    teamed = ice(x)
    (plan,) = ice._plans.values()
    call = plan.runs[0]
    assert call.options["n_team"] == 2 and call.solo["n_team"] == 1
    assert {k: v for k, v in call.solo.items() if k != "n_team"} == \
        {k: v for k, v in call.options.items() if k != "n_team"}
    monkeypatch.setattr(cb, "_last_end", 0.0)               # long ago
    assert call.team_options() is call.solo
    alone = ice(x)                                          # ends now
    assert call.team_options() is call.options
    for a, b in zip([teamed[0]] + list(np.atleast_1d(teamed[1]) if cell != "lstm"
                                       else teamed[1]),
                    [alone[0]] + list(np.atleast_1d(alone[1]) if cell != "lstm"
                                      else alone[1])):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(cb, "IDLE_TEAM_S", None)            # off: the team always
    monkeypatch.setattr(cb, "_last_end", 0.0)
    assert call.team_options() is call.options
    monkeypatch.setattr(cb, "IDLE_TEAM_S", 150e-6)
    # more multiply-adds than the bound, or a long call: no solo options
    wide = make_layer(cell, 512, 512, rng=0, backend="cython").freeze()
    wide(np.zeros((2, 16, 512), np.float32))
    (wide_plan,) = wide._plans.values()
    assert wide_plan.runs[0].unit_parts == 2 and wide_plan.runs[0].solo is None
    long = make_layer(cell, 256, 256, rng=0, backend="cython").freeze()
    long(np.zeros((cb.PREPARE_MIN_T, 1, 256), np.float32))
    (long_plan,) = long._plans.values()
    assert long_plan.runs[0].solo is None


def test_larger_short_call_runs_alone_only_after_its_thread_slept(two_threads, monkeypatch):
    """Between ``IDLE_SOLO_MAX_MACS`` and ``SLEPT_SOLO_MAX_MACS`` multiply-adds,
    a short unit-split call runs alone after an idle gap only if its thread
    slept through it (its CPU time over the gap under half of it, timed on
    the same thread), and gives the team's bits either way."""
    from threading import get_ident
    from time import perf_counter, thread_time
    ice = make_layer("lstm", 256, 256, rng=0, backend="cython").freeze()
    x = np.random.default_rng(3).standard_normal((1, 8, 256)).astype(np.float32)
    teamed = ice(x)                                         # 4.2M multiply-adds
    (plan,) = ice._plans.values()
    call = plan.runs[0]
    assert call.solo is not None and call.solo_if_slept
    assert cb._last_timed[2] == get_ident()                 # the call timed its thread
    monkeypatch.setattr(cb, "_last_end", 0.0)               # idle since long ago
    now = perf_counter()
    monkeypatch.setattr(cb, "_last_timed", (now - 1.0, thread_time(), get_ident()))
    assert call.team_options() is call.solo                 # asleep for that second
    alone = ice(x)
    monkeypatch.setattr(cb, "_last_end", 0.0)
    monkeypatch.setattr(cb, "_last_timed", (now - 1.0, thread_time() - 1.0, get_ident()))
    assert call.team_options() is call.options              # busy all along
    monkeypatch.setattr(cb, "_last_timed", (now - 1.0, thread_time(), -1))
    assert call.team_options() is call.options              # timed on another thread
    monkeypatch.setattr(cb, "SLEPT_SOLO_MAX_MACS", None)
    fresh = make_layer("lstm", 256, 256, rng=0, backend="cython").freeze()
    fresh(x)
    (fresh_plan,) = fresh._plans.values()
    assert fresh_plan.runs[0].solo is None
    for a, b in zip([teamed[0], *teamed[1]], [alone[0], *alone[1]]):
        np.testing.assert_array_equal(a, b)


def test_pipelined_call_runs_alone_only_after_its_thread_slept(two_threads, monkeypatch):
    """A long call whose projections run ahead on a second thread (the
    RNN's latency shape) runs alone after a gap its thread slept through,
    with the team's bits; a long unit-split call keeps its team."""
    from threading import get_ident
    from time import perf_counter, thread_time
    ice = make_layer("rnn_tanh", 128, 128, rng=0, backend="cython").freeze()
    x = np.random.default_rng(4).standard_normal((100, 1, 128)).astype(np.float32)
    teamed = ice(x)
    (plan,) = ice._plans.values()
    call = plan.runs[0]
    if not call.options.get("pipe_chunk") or call.options["n_team"] < 2:
        pytest.skip("this build does not pipeline the RNN's latency shape")
    assert call.solo == dict(call.options, n_team=1) and call.solo_if_slept
    monkeypatch.setattr(cb, "_last_end", 0.0)
    now = perf_counter()
    monkeypatch.setattr(cb, "_last_timed", (now - 1.0, thread_time() - 1.0, get_ident()))
    assert call.team_options() is call.options              # busy: the team
    monkeypatch.setattr(cb, "_last_timed", (now - 1.0, thread_time(), get_ident()))
    assert call.team_options() is call.solo                 # asleep: alone
    alone = ice(x)
    for a, b in zip(teamed, alone):
        np.testing.assert_array_equal(a, b)
    split = make_layer("lstm", 128, 128, rng=0, backend="cython").freeze()
    split(x)
    (split_plan,) = split._plans.values()
    if split_plan.runs[0].options.get("unit_parts"):
        assert split_plan.runs[0].solo is None


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_short_unit_split_from_several_threads(two_threads, cell):
    """Frozen short calls that split their units, from four Python threads at
    once (four teams on two cores): every call gets the bits it gets alone."""
    layer = make_layer(cell, 256, 256, rng=0, backend="cython")
    ice = layer.freeze()
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1 + k % 2, 2 + k, 256)).astype(np.float32) for k in range(4)]
    assert all(cb.unit_parts(cell, F32, x.shape[0], x.shape[1], ice._layer._kernel_params(0),
                             training=False) == 2 for x in xs)
    expected = [layer(x)[0] for x in xs]
    failures = []

    def run(k):
        for _ in range(50):
            if not np.array_equal(ice(xs[k])[0], expected[k]):
                failures.append(k)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
