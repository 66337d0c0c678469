"""The input projections of an unsplit forward run ahead of its time loop on
a second thread (``project_ahead`` in src_ext/_rnn_common.pxd), chosen by
the Cython backend's ``pipeline_chunk``, and the GEMMs of an unsplit
backward behind its loop (``gradients_behind``, ``gradient_chunk``):
outputs and every gradient right against the reference, the same bits on
one thread and two, a ring of chunk slots reused many times over, and the
rules that pick them.

The rules take them only from 512K and 2M multiply-adds; the fixtures lower
the thresholds and the chunks so that small odd shapes take them with many
chunks a call.
"""
import numpy as np
import pytest

import fastrnn
from conftest import (assert_two_threads_match, make_lengths, make_params, make_states, make_x,
                      projected_case, record_keyword)
from conftest import assert_runs_equal as assert_same, run_on_threads as run
from fastrnn import _backends, _parallel

if "cython" not in fastrnn.available_backends():
    pytest.skip("the Cython backend is not built here", allow_module_level=True)

# batches under the batch split's 8 rows, T over many chunks and not a
# multiple of them, G*H from 2 to 192 values
SHAPES = [(13, 1, 9, 32), (11, 3, 7, 48), (9, 2, 33, 5), (17, 5, 16, 40), (10, 1, 20, 2)]


@pytest.fixture(params=[(1, 2), (2, 3), (5, 1)], ids=lambda p: f"{p[0]} rows, {p[1]} slots")
def pipeline_everywhere(request, monkeypatch):
    """Pipeline every unsplit forward's projections of two chunks or more,
    chunks of at least ``rows`` rows in a ring of ``slots``; record the
    chunk asked. Yields the list of chunks."""
    module = _backends.get("cython").module
    rows, slots = request.param
    monkeypatch.setattr(module, "PIPELINE_MIN_MACS", 0)
    monkeypatch.setattr(module, "PIPELINE_CHUNK_ROWS", rows)
    monkeypatch.setattr(module, "PIPELINE_SLOTS", slots)
    monkeypatch.setattr(module, "PIPELINE_MIN_CHUNKS", 2)
    monkeypatch.setattr(module, "PIPELINE_WIDE_MAX_B", None)
    calls = record_keyword(monkeypatch, module, "forward", "pipe_chunk", 0)
    threads = _parallel.get_num_threads()
    yield calls
    _parallel.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("lengths_kind", [None, "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_pipeline_matches_reference_and_one_thread(pipeline_everywhere, cell, T, B, I, H,
                                                   reverse, lengths_kind, training, dtype):
    calls = pipeline_everywhere
    x, states, params = make_x(T, B, I), make_states(cell, B, H), make_params(cell, I, H)
    assert_two_threads_match(cell, x, states, params, make_lengths(lengths_kind, T, B), reverse,
                             training, make_x(T, B, H, seed=7), dtype)
    assert len(calls) == 2 and 0 < calls[0] <= T // 2, "the forward did not pipeline"


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pipeline_with_a_projection(pipeline_everywhere, dtype, training):
    calls = pipeline_everywhere
    arrays, lengths = projected_case()
    x, s0, s1, *p, dy = arrays
    assert_two_threads_match("lstm", x, (s0, s1), tuple(p[:4]), lengths, False, training, dy,
                             dtype, weight_hr=p[4])
    assert len(calls) == 2 and calls[0] > 0


@pytest.mark.parametrize("side", ["ahead", "behind"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_one_step_chunks_hand_over_every_step(monkeypatch, cell, side):
    """The tightest handovers: chunks of one step over a thousand steps. Ahead
    of the forward's loop, in a ring of two slots, so the projecting thread
    waits on the loop for almost every slot; behind the backward's, so the
    second thread waits on the loop for every block. Twenty calls (inference
    ahead, training behind) on two threads give the bits of one thread each
    time (a slot overwritten too early, or a chunk or block read before it
    was written, changes them)."""
    module = _backends.get("cython").module
    if side == "ahead":
        settings = dict(PIPELINE_MIN_MACS=0, PIPELINE_CHUNK_ROWS=1, PIPELINE_SLOTS=2,
                        GRADIENTS_BEHIND_MIN_MACS=None)
        keyword, function = "pipe_chunk", "forward"
    else:
        settings = dict(GRADIENTS_BEHIND_MIN_MACS=0, GRADIENTS_BEHIND_ROWS=1,
                        PIPELINE_MIN_MACS=None)
        keyword, function = "grad_chunk", "backward"
    training = side == "behind"         # an inference call reuses the ring's slots
    for name, value in settings.items():
        monkeypatch.setattr(module, name, value)
    calls = record_keyword(monkeypatch, module, function, keyword, 0)
    T, B, I, H = 1000, 1, 24, 32
    x, states, params = (make_x(T, B, I, np.float32), make_states(cell, B, H, np.float32),
                         make_params(cell, I, H, np.float32))
    dy = make_x(T, B, H, np.float32, seed=7)
    threads = _parallel.get_num_threads()
    try:
        one = run(cell, "cython", x, states, params, None, False, training, 1, dy)
        for _ in range(20):
            assert_same(run(cell, "cython", x, states, params, None, False, training, 2, dy),
                        one)
    finally:
        _parallel.set_num_threads(threads)
    assert set(calls) == {1}


def test_pipeline_rule():
    """By the shape alone: at least 512K multiply-adds of projection and four
    chunks of at least 16 rows. The grid's RNN latency call pipelines in
    chunks of 16 steps; a batch of 5 in chunks of 4 steps; too few steps or
    too little work do not."""
    rule = _backends.get("cython").module.pipeline_chunk
    assert rule("rnn_tanh", False, 100, 1, 128, 128) == 16
    assert rule("lstm", True, 200, 5, 128, 512) == 4
    assert rule("lstm", False, 63, 1, 1024, 4096) == 0           # under four chunks
    assert rule("gru", False, 100, 1, 8, 96) == 0                # 77K multiply-adds


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_wide_inputs_pipeline_only_small_batches(monkeypatch, training):
    """With I at least 2H, a batch of more than PIPELINE_WIDE_MAX_B rows
    projects in parts before its loop instead: H from G*H per cell."""
    module = _backends.get("cython").module
    rule = module.pipeline_chunk
    monkeypatch.setattr(module, "PIPELINE_WIDE_MAX_B", 3)
    assert rule("rnn_tanh", training, 100, 3, 1024, 256) == 6
    assert rule("rnn_tanh", training, 100, 4, 1024, 256) == 0
    assert rule("rnn_tanh", training, 100, 4, 511, 256) == 4     # I under 2H
    assert rule("gru", training, 100, 5, 512, 3 * 256) == 0      # I = 2H
    assert rule("lstm", training, 100, 5, 511, 4 * 256) == 4
    monkeypatch.setattr(module, "PIPELINE_WIDE_MAX_B", None)
    assert rule("rnn_tanh", training, 100, 4, 1024, 256) == 4


def test_split_batches_and_unit_splits_do_not_pipeline(monkeypatch):
    """The parts of a split batch keep both cores busy already, and a unit
    split projects its own units' columns: neither pipelines."""
    module = _backends.get("cython").module
    monkeypatch.setattr(module, "PIPELINE_MIN_MACS", 0)
    calls = record_keyword(monkeypatch, module, "forward", "pipe_chunk", 0)
    T, B, I, H = 40, 32, 64, 64
    assert len(_parallel.parts(B, T, I, H, 4)) == 2
    x, states, params = (make_x(T, B, I, np.float32), make_states("lstm", B, H, np.float32),
                         make_params("lstm", I, H, np.float32))
    run("lstm", "cython", x, states, params, None, False, False, 2, None)
    assert calls == [0, 0]
    if module.UNIT_SPLIT_MIN_BYTES is None:
        return                                   # no unit split in this build
    calls.clear()
    T, B, I, H = 40, 1, 9, 256
    params = make_params("lstm", I, H, np.float32)
    assert module.unit_parts("lstm", np.dtype(np.float32), T, B, params, False)
    run("lstm", "cython", make_x(T, B, I, np.float32), make_states("lstm", B, H, np.float32),
        params, None, False, False, 2, None)
    assert calls == [0]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_kernels_check_pipe_chunk(cell):
    """A chunk larger than the gates buffer, or negative, is refused by name."""
    from fastrnn._ext import gru, lstm, rnn
    kernel = {"rnn": rnn, "lstm": lstm, "gru": gru}[cell].forward
    T, B, I, H = 6, 1, 4, 8
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    f = np.float32
    x, w_ih, w_hh = np.ones((T, B, I), f), np.ones((G * H, I), f), np.ones((G * H, H), f)
    bias, gates = np.zeros(G * H, f), np.zeros((3, B, G * H), f)
    hs, y = np.zeros((2, B, H), f), np.zeros((T, B, H), f)
    gh = np.zeros((B, G * H), f)
    for bad in (-1, 4):
        with pytest.raises(ValueError, match="pipe_chunk"):
            if cell == "rnn":
                kernel(x, w_ih, w_hh, bias, None, False, False, gates, hs, y, pipe_chunk=bad)
            elif cell == "lstm":
                kernel(x, w_ih, w_hh, bias, None, False, gates, gh, hs, np.zeros_like(hs), y,
                       pipe_chunk=bad)
            else:
                kernel(x, w_ih, w_hh, bias, np.zeros(H, f), None, False, gates, gh, None, hs, y,
                       pipe_chunk=bad)


@pytest.fixture(params=[(1, 2), (5, 2), (3, 3)], ids=lambda p: f"{p[0]} rows, {p[1]} blocks")
def gradients_behind_everywhere(request, monkeypatch):
    """Compute every unsplit backward's GEMMs behind its loop, whatever its
    sizes, blocks of at least ``rows`` rows, from ``blocks`` blocks a call;
    record the block asked. Yields the list of blocks."""
    module = _backends.get("cython").module
    rows, blocks = request.param
    monkeypatch.setattr(module, "GRADIENTS_BEHIND_MIN_MACS", 0)
    monkeypatch.setattr(module, "GRADIENTS_BEHIND_ROWS", rows)
    monkeypatch.setattr(module, "GRADIENTS_BEHIND_MIN_BLOCKS", blocks)
    monkeypatch.setattr(module, "GRADIENTS_BEHIND_MAX_RATIO", float("inf"))
    monkeypatch.setattr(module, "GRADIENTS_BEHIND_MAX_H", float("inf"))
    calls = record_keyword(monkeypatch, module, "backward", "grad_chunk", 0)
    threads = _parallel.get_num_threads()
    yield calls
    _parallel.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lengths_kind", [None, "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_gradients_behind_match_reference_and_one_thread(gradients_behind_everywhere, cell, T,
                                                         B, I, H, reverse, lengths_kind, dtype):
    calls = gradients_behind_everywhere
    x, states, params = make_x(T, B, I), make_states(cell, B, H), make_params(cell, I, H)
    assert_two_threads_match(cell, x, states, params, make_lengths(lengths_kind, T, B), reverse,
                             True, make_x(T, B, H, seed=7), dtype)
    assert len(calls) == 2 and 0 < calls[0] < T, "the backward did not compute behind its loop"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_behind_with_a_projection(gradients_behind_everywhere, dtype):
    calls = gradients_behind_everywhere
    arrays, lengths = projected_case()
    x, s0, s1, *p, dy = arrays
    assert_two_threads_match("lstm", x, (s0, s1), tuple(p[:4]), lengths, False, True, dy,
                             dtype, weight_hr=p[4])
    assert len(calls) == 2 and calls[0] > 0


def test_gradients_behind_rule():
    """By the shape alone: at least 2M multiply-adds in the three GEMMs, two
    blocks of at least 32 rows, H up to 128 and at most 3H multiply-adds of
    the GEMMs for each one of the loop's products (B * (2I + H)). The grid's
    RNN latency training computes behind its loop in blocks of 32 steps; a
    batch of 5 or H = 256 do not, nor does a call under 2M."""
    rule = _backends.get("cython").module.gradient_chunk
    assert rule("rnn_tanh", 100, 1, 128, 128, 128) == 32
    assert rule("lstm", 1000, 1, 64, 256, 64) == 32
    assert rule("lstm", 63, 1, 64, 256, 64) == 0                 # under two blocks
    assert rule("lstm", 200, 5, 128, 512, 128) == 0              # 5 * 384 > 3 * 128
    assert rule("rnn_tanh", 200, 1, 256, 256, 256) == 0          # H over 128
    assert rule("rnn_tanh", 100, 1, 64, 64, 64) == 0             # 1.2M multiply-adds
