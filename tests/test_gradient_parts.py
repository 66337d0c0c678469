"""The GEMMs after a backward's time loop in parts across fastrnn's threads
(Cython: ``gradients_on_team`` in src_ext/_rnn_common.pxd; Numba:
``kernels.gradient_part``), chosen by each backend's ``gradient_parts`` for
a backward whose batch is not split: every gradient right against the
reference, the same bits on any thread count, and chosen only for unsplit
calls.

The rules take it only from 2M (Cython) or 64M (Numba) multiply-adds; the
fixture lowers the threshold so that small odd shapes take it.
"""
import threading

import numpy as np
import pytest

import fastrnn
from conftest import (RTOL, assert_results_equal, make_lengths, make_params, make_states,
                      make_x, projected_case, record_keyword, run_backward, run_forward)
from fastrnn import _backends, _parallel

NATIVE = [b for b in ("cython", "numba") if b in fastrnn.available_backends()]
if not NATIVE:
    pytest.skip("no native backend here", allow_module_level=True)

# batches under the batch split's 8 rows; I and G*H on and off the parts'
# 16-value bounds, I under 16 (one part gets no columns of dx), H = 2
SHAPES = [(6, 1, 9, 32), (5, 3, 7, 48), (4, 2, 33, 5), (7, 5, 16, 40), (3, 1, 20, 2)]


def spy_on_backward(monkeypatch, backend):
    """The ``grad_parts`` of every call of the backend's backward, from now on."""
    return record_keyword(monkeypatch, _backends.get(backend).module, "backward",
                          "grad_parts", 1)


@pytest.fixture(params=[(b, n) for b in NATIVE for n in (2, 3)],
                ids=[f"{b}-{n} parts" for b in NATIVE for n in (2, 3)])
def parts_everywhere(request, monkeypatch):
    """Split the gradient GEMMs of every unsplit backward; record the parts asked.
    Yields (backend, parts, calls)."""
    backend, n_parts = request.param
    monkeypatch.setattr(_backends.get(backend).module, "GRADIENT_PARTS_MIN_MACS", 0)
    monkeypatch.setattr(_parallel, "GRADIENT_PARTS", n_parts)
    calls = spy_on_backward(monkeypatch, backend)
    threads = _parallel.get_num_threads()
    yield backend, n_parts, calls
    _parallel.set_num_threads(threads)


def train(cell, backend, x, states, params, lengths, reverse, threads, dy, **kw):
    _parallel.set_num_threads(threads)
    out = run_forward(cell, backend, x, states, params, lengths=lengths, reverse=reverse,
                      training=True, **kw)
    return run_backward(cell, out.workspace, dy)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lengths_kind", [None, "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_gradient_parts_match_reference_and_any_thread_count(parts_everywhere, cell, T, B, I, H,
                                                             reverse, lengths_kind, dtype):
    backend, n_parts, calls = parts_everywhere
    x, states, params = make_x(T, B, I), make_states(cell, B, H), make_params(cell, I, H)
    dy = make_x(T, B, H, seed=7)
    lengths = make_lengths(lengths_kind, T, B)
    n = len(states)
    cast = [a.astype(dtype) for a in (x, *states, *params, dy)]
    args = (cast[0], cast[1:1 + n], cast[1 + n:-1], lengths, reverse)
    two = train(cell, backend, *args, threads=2, dy=cast[-1])
    assert calls == [n_parts], "the backward did not split its gradient GEMMs"
    one = train(cell, backend, *args, threads=1, dy=cast[-1])
    assert_results_equal(two, one)                       # bit for bit
    expected = train(cell, "reference", x, states, params, lengths, reverse, 2, dy)
    assert_results_equal(two, expected, exact=False, rtol=RTOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_parts_with_a_projection(parts_everywhere, dtype):
    arrays, lengths = projected_case()

    def run(backend, threads, arrays):
        x_, s0, s1, *p, dy_ = arrays
        return train("lstm", backend, x_, (s0, s1), tuple(p[:4]), lengths, False, threads, dy_,
                     weight_hr=p[4])
    backend, n_parts, calls = parts_everywhere
    cast = [a.astype(dtype) for a in arrays]
    two = run(backend, 2, cast)
    assert calls == [n_parts]
    assert_results_equal(two, run(backend, 1, cast))
    assert_results_equal(two, run("reference", 2, arrays), exact=False,
                         rtol=RTOL[np.dtype(dtype)])


@pytest.mark.parametrize("backend", NATIVE)
def test_gradient_parts_rule(backend):
    """By the shape alone: the grid's latency shape (B = 1) takes it in
    Cython (an OpenMP team), larger products only in Numba (Python threads);
    tiny calls in neither."""
    rule = _backends.get(backend).module.gradient_parts
    latency = {"cython": _parallel.GRADIENT_PARTS, "numba": 1}[backend]
    for cell, GH in (("rnn_tanh", 128), ("lstm", 512), ("gru", 384)):
        assert rule(cell, 100, 1, 128, GH, 128) == latency
        assert rule(cell, 3, 1, 16, GH // 8, 16) == 1
        assert rule(cell, 100, 4, 512, GH * 4, 512) == _parallel.GRADIENT_PARTS


@pytest.mark.parametrize("backend", NATIVE)
def test_split_batches_keep_whole_gradient_gemms(monkeypatch, backend):
    """The parts of a split batch each run on one thread already: no team."""
    monkeypatch.setattr(_backends.get(backend).module, "GRADIENT_PARTS_MIN_MACS", 0)
    calls = spy_on_backward(monkeypatch, backend)
    T, B, I, H = 10, 32, 64, 64
    assert len(_parallel.parts(B, T, I, H, 4)) == 2
    x, states, params = (make_x(T, B, I, np.float32), make_states("lstm", B, H, np.float32),
                         make_params("lstm", I, H, np.float32))
    train("lstm", backend, x, states, params, None, False, 2, make_x(T, B, H, np.float32))
    assert calls == [1, 1]


@pytest.mark.parametrize("backend", NATIVE)
def test_teams_of_concurrent_calls_give_the_sequential_bits(monkeypatch, backend):
    """Four Python threads at once, each training through the gradient GEMMs
    in parts (and, in Cython, the units split in forward and backward):
    every result has the bits of the same call made alone."""
    monkeypatch.setattr(_backends.get(backend).module, "GRADIENT_PARTS_MIN_MACS", 0)
    if backend == "cython":
        monkeypatch.setattr(_backends.get(backend).module, "UNIT_SPLIT_MIN_BYTES", {256: 0})
    threads = _parallel.get_num_threads()
    _parallel.set_num_threads(2)
    jobs = []
    for i, cell in enumerate(["lstm", "gru", "lstm", "gru"]):
        T, B, I, H = 6 + i, 1 + i, 9, 32
        x, states = make_x(T, B, I, np.float32, seed=i), make_states(cell, B, H, np.float32)
        params, dy = make_params(cell, I, H, np.float32), make_x(T, B, H, np.float32, seed=9)
        jobs.append((cell, x, states, params, make_lengths("mixed", T, B), dy))

    def call(job):
        cell, x, states, params, lengths, dy = job
        out = run_forward(cell, backend, x, states, params, lengths=lengths, training=True)
        return out, run_backward(cell, out.workspace, dy)
    try:
        expected = [call(job) for job in jobs]
        got = [[] for _ in jobs]
        start = threading.Barrier(len(jobs))

        def worker(k):
            start.wait()
            for _ in range(5):
                got[k].append(call(jobs[k]))
        workers = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert not any(w.is_alive() for w in workers), "a thread did not finish in 120 s"
    finally:
        _parallel.set_num_threads(threads)
    for k, rounds in enumerate(got):
        assert len(rounds) == 5
        for out, grads in rounds:
            assert_results_equal(out, expected[k][0])
            assert_results_equal(grads, expected[k][1])
