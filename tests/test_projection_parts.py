"""The input projections of a forward whose batch is not split, in column
parts across fastrnn's threads (``project_on_team`` in
src_ext/_rnn_common.pxd), chosen by the Cython backend's
``projection_parts``: outputs and every gradient right against the
reference, the same bits on any thread count, several chunks of steps per
call, and chosen only for unsplit calls.

The rule takes it only from 4M multiply-adds per projection GEMM; the
fixture lowers the threshold so that small odd shapes take it.
"""
import numpy as np
import pytest

import fastrnn
from conftest import (assert_two_threads_match, make_lengths, make_params, make_states, make_x,
                      projected_case, record_keyword)
from conftest import run_on_threads as run
from fastrnn import _backends, _buffers, _parallel

if "cython" not in fastrnn.available_backends():
    pytest.skip("the Cython backend is not built here", allow_module_level=True)

# batches under the batch split's 8 rows; G*H on and off the parts' 16-value
# bounds, and under 16 (one part gets no columns), H = 2
SHAPES = [(6, 1, 9, 32), (5, 3, 7, 48), (4, 2, 33, 5), (7, 5, 16, 40), (3, 1, 20, 2)]


@pytest.fixture(params=[2, 3], ids=["2 parts", "3 parts"])
def parts_everywhere(request, monkeypatch):
    """Split the input projections of every unsplit forward, 3 steps per
    chunk in inference (so a call projects several chunks); record the parts
    asked. Yields (parts, calls)."""
    module = _backends.get("cython").module
    monkeypatch.setattr(module, "PROJECTION_PARTS_MIN_MACS", 0)
    monkeypatch.setattr(module, "PIPELINE_MIN_MACS", None)     # parts, not the pipeline
    monkeypatch.setattr(_parallel, "PROJECTION_PARTS", request.param)
    monkeypatch.setattr(_buffers, "chunk", lambda T, B, GH: min(T, 3))
    calls = record_keyword(monkeypatch, module, "forward", "proj_parts", 1)
    threads = _parallel.get_num_threads()
    yield request.param, calls
    _parallel.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("lengths_kind", [None, "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_projection_parts_match_reference_and_any_thread_count(parts_everywhere, cell, T, B, I,
                                                               H, reverse, lengths_kind,
                                                               training, dtype):
    n_parts, calls = parts_everywhere
    x, states, params = make_x(T, B, I), make_states(cell, B, H), make_params(cell, I, H)
    assert_two_threads_match(cell, x, states, params, make_lengths(lengths_kind, T, B), reverse,
                             training, make_x(T, B, H, seed=7), dtype)
    assert calls == [n_parts] * 2, "the forward did not split its input projections"


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_projection_parts_with_a_projection(parts_everywhere, dtype, training):
    n_parts, calls = parts_everywhere
    arrays, lengths = projected_case()
    x, s0, s1, *p, dy = arrays
    assert_two_threads_match("lstm", x, (s0, s1), tuple(p[:4]), lengths, False, training, dy,
                             dtype, weight_hr=p[4])
    assert calls == [n_parts] * 2


def test_projection_parts_rule():
    """By the shape alone: one projection GEMM of at least 4M multiply-adds.
    The grid's RNN latency call (1.6M) projects whole; an LSTM or GRU
    training call projects all its steps at once, inference a chunk."""
    rule = _backends.get("cython").module.projection_parts
    parts = _parallel.PROJECTION_PARTS
    assert rule("rnn_tanh", False, 100, 1, 128, 128) == 1
    assert rule("rnn_tanh", False, 100, 1, 256, 256) == parts
    assert rule("lstm", True, 1000, 1, 64, 256) == parts
    assert rule("lstm", False, 3, 1, 16, 64) == 1
    # inference projects a chunk of steps at a time: its rows, not T*B, count
    chunk = _buffers.chunk(100000, 1, 256)
    assert chunk < 100000
    assert rule("lstm", False, 100000, 1, 64, 256) == \
        (parts if chunk * 256 * 64 >= 1 << 22 else 1)


def test_split_batches_and_unit_splits_keep_whole_projections(parts_everywhere):
    """The parts of a split batch each run on one thread already, and a unit
    split projects its own units' columns: neither asks for parts."""
    n_parts, calls = parts_everywhere
    T, B, I, H = 10, 32, 64, 64
    assert len(_parallel.parts(B, T, I, H, 4)) == 2
    x, states, params = (make_x(T, B, I, np.float32), make_states("lstm", B, H, np.float32),
                         make_params("lstm", I, H, np.float32))
    run("lstm", "cython", x, states, params, None, False, False, 2, None)
    assert calls == [1, 1]
    module = _backends.get("cython").module
    if module.UNIT_SPLIT_MIN_BYTES is None:
        return                                   # no unit split in this build
    calls.clear()
    T, B, I, H = 6, 1, 9, 256
    assert module.unit_parts("lstm", np.dtype(np.float32), T, B,
                             make_params("lstm", I, H, np.float32), False)
    x, states, params = (make_x(T, B, I, np.float32), make_states("lstm", B, H, np.float32),
                         make_params("lstm", I, H, np.float32))
    run("lstm", "cython", x, states, params, None, False, False, 2, None)
    assert calls == [1]
