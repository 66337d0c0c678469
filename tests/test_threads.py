"""Threads: the native kernels release the GIL, and concurrent calls give
results bit-identical to the same calls made one by one.

- The Cython kernels run their whole time loop inside ``with nogil``; the
  Numba kernels are compiled with ``nogil=True``. Both are shown to let
  another Python thread run while a long call is in progress.
- Eight threads started together (a Barrier) run different cells, shapes,
  dtypes, backends, kernel functions and layers; every result equals, bit for
  bit, the result of the same call made alone. With BLAS at one thread
  (threadpoolctl) that includes batches large enough to be split over
  fastrnn's own threads. With BLAS's default threads it does not: a split call
  holds the process's BLAS at one thread while it runs, and OpenBLAS's float32
  GEMM rounds differently on one and two threads at some shapes, so an
  unsplit float32 call running at that moment in another thread can differ in
  its last bits (docs/reliability.md).
- One layer shared by eight threads (training and inference, forward and
  backward) gives each thread its own results: a layer keeps no per-call
  state, the training Context carries it.
"""
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastrnn
from conftest import (arrays_of, make_layer, make_lengths, make_params,
                      make_projected_params, make_projected_states, make_states, make_x,
                      run_backward, run_forward, states_of)

NATIVE = [b for b in ("cython", "numba") if b in fastrnn.available_backends()]
N_THREADS = 8
ROUNDS = 10


def flat(results):
    """Every array of a list of forward/backward results or layer outputs, in order."""
    out = []
    for r in results:
        if isinstance(r, np.ndarray):
            out.append(r)
        elif hasattr(r, "_asdict"):
            out.extend(v for v in arrays_of(r).values() if v is not None)
        elif isinstance(r, dict):
            out.extend(r.values())
        else:
            out.extend(flat(r))
    return out


def assert_bit_identical(got, expected, what):
    got, expected = flat(got), flat(expected)
    assert len(got) == len(expected), what
    for i, (a, e) in enumerate(zip(got, expected)):
        assert a.dtype == e.dtype and a.shape == e.shape, (what, i)
        assert np.array_equal(a, e, equal_nan=True), (what, i)


# ------------------------------------------------------------------ the GIL

@pytest.mark.parametrize("backend", NATIVE)
def test_a_long_kernel_call_lets_other_threads_run(backend):
    """While one thread is inside a long forward, another keeps running Python.

    The main thread notes every pause of more than 1 ms in its own loop. Had
    the kernel held the GIL, the main thread would stand still for the whole
    kernel, nearly the whole call; with the GIL released its longest pause is
    a scheduling hiccup. BLAS is limited to one thread so that the two
    Python threads have a core each. (Checked to tell the two apart: a 0.5 s
    C call through ctypes.PyDLL, which keeps the GIL, shows one 0.5 s pause;
    through ctypes.CDLL none over 1 ms. The kernels measured 8-12 ms at most
    in 1.4 s calls.)
    """
    T, B, I, H = 4000, 2, 32, 96
    x = make_x(T, B, I, np.float64)
    states = make_states("lstm", B, H, np.float64)
    params = make_params("lstm", I, H, np.float64)
    window = {}

    def work():
        window["start"] = time.perf_counter()
        run_forward("lstm", backend, x, states, params)
        window["end"] = time.perf_counter()

    with threadpool_limits(1):
        run_forward("lstm", backend, x[:5], states, params)     # compile / warm up
        pauses = []
        worker = threading.Thread(target=work)
        # from before start(): start() returns only once the new thread has
        # run, so a kernel holding the GIL would already block it
        last = time.perf_counter()
        worker.start()
        loops = 0
        while worker.is_alive():
            now = time.perf_counter()
            if now - last > 1e-3:
                pauses.append((last, now))
            last = now
            loops += 1
        worker.join()
    start, end = window["start"], window["end"]
    duration = end - start
    inside = [min(b, end) - max(a, start) for a, b in pauses if b > start and a < end]
    longest = max(inside, default=0.0)
    assert duration > 0.05, "the call is too short to tell"
    assert longest < 0.5 * duration, (longest, duration)
    assert loops > 1000


# ------------------------------------------------------- concurrent callers

def kernel_job(cell, backend, dtype, shape, proj=None, reverse=False, lengths="mixed"):
    """A forward + backward of one kernel function; returns a function of no arguments."""
    T, B, I, H = shape
    x = make_x(T, B, I, dtype)
    if proj:
        states = make_projected_states(B, H, proj, dtype)
        params = make_projected_params(I, H, proj, dtype)
        kw = {"weight_hr": params[4]}
        params = params[:4]
    else:
        states = make_states(cell, B, H, dtype)
        params = make_params(cell, I, H, dtype)
        kw = {}
    out_size = proj or H
    rng = np.random.default_rng(5)
    dy = rng.standard_normal((T, B, out_size)).astype(dtype)
    dstates = tuple(rng.standard_normal(s.shape).astype(dtype) for s in states)
    lens = make_lengths(lengths, T, B)

    def run():
        out = run_forward(cell, backend, x, states, params, lengths=lens, reverse=reverse,
                          training=True, **kw)
        inference = run_forward(cell, backend, x, states, params, lengths=lens,
                                reverse=reverse, **kw)
        return out, inference, run_backward(cell, out.workspace, dy, dstates)
    return run


def layer_job(cell, backend, dtype, T, B, I, H, **options):
    """A layer's training forward (with dropout drawn from a per-call seed) and
    backward, plus an inference forward; returns a function of no arguments."""
    layer = make_layer(cell, I, H, dtype=dtype, backend=backend, rng=1, **options)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((B, T, I) if options.get("batch_first") else (T, B, I)).astype(dtype)
    y = layer(x)[0]
    dy = rng.standard_normal(y.shape).astype(dtype)
    lengths = make_lengths("mixed", T, B)

    def run():
        y, h, ctx = layer(x, lengths=lengths, training=True, rng=3)
        g = layer.backward(ctx, dy)
        y_inf, h_inf = layer(x, lengths=lengths)
        return [y, *states_of(h, cell), g.dx, *states_of(g.dhx, cell), g.dparams,
                y_inf, *states_of(h_inf, cell)]
    return run


def jobs(split=False):
    """Eight different workloads: every cell, both native backends, both dtypes,
    kernel functions and layers, and the internal paths (packed float32 product,
    K-major W_hh copy, several input-projection chunks, projection, reverse);
    with ``split``, two of them large enough to be split over fastrnn's threads."""
    b0, b1 = NATIVE[0], NATIVE[-1]
    if split:
        return {**jobs(), "rnn_tanh-long": kernel_job("lstm", b1, np.float32, (30, 16, 16, 64)),
                "rnn-layer": layer_job("gru", b0, np.float32, 12, 16, 32, 128)}
    return {
        "lstm-packed": kernel_job("lstm", b0, np.float32, (30, 8, 16, 32)),
        "gru-kmajor": kernel_job("gru", b1, np.float64, (20, 40, 8, 16), reverse=True),
        "rnn_tanh-long": kernel_job("rnn_tanh", b0, np.float64, (120, 3, 5, 7)),
        "rnn_relu-chunks": kernel_job("rnn_relu", b1, np.float32, (9, 300, 4, 6)),
        "lstm-proj": kernel_job("lstm", b1, np.float32, (12, 5, 6, 10), proj=4, reverse=True),
        "lstm-layer": layer_job("lstm", b0, np.float32, 15, 6, 8, 12, num_layers=2,
                                bidirectional=True, dropout=0.3),
        "gru-layer": layer_job("gru", b1, np.float64, 10, 4, 5, 9, num_layers=3,
                               batch_first=True, dropout=0.2),
        "rnn-layer": layer_job("rnn_relu", b0, np.float32, 25, 33, 3, 17, bidirectional=True),
    }


def run_concurrently(fns, rounds=ROUNDS):
    """Run each function ``rounds`` times in its own thread, all starting at
    once; returns ``{name: [result of each round]}`` and re-raises any error.
    Also checks that calls of different threads did overlap in time."""
    barrier = threading.Barrier(len(fns))
    results = {name: [] for name in fns}
    spans = []
    errors = []

    def target(name):
        try:
            barrier.wait()
            for _ in range(rounds):
                start = time.perf_counter()
                results[name].append(fns[name]())
                spans.append((start, time.perf_counter(), name))
        except BaseException as exc:
            errors.append((name, exc))
            barrier.abort()
    threads = [threading.Thread(target=target, args=(name,)) for name in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish in 120 s"
    if errors:
        raise errors[0][1]
    overlapping = {frozenset((n1, n2)) for s1, e1, n1 in spans for s2, e2, n2 in spans
                   if n1 != n2 and s1 < e2 and s2 < e1}
    assert len(overlapping) >= len(fns) // 2, "the threads hardly ran at the same time"
    return results


def test_eight_threads_give_the_results_of_sequential_calls():
    work = jobs()
    assert len(work) == N_THREADS
    expected = {name: fn() for name, fn in work.items()}       # one by one
    got = run_concurrently(work)
    for name, rounds in got.items():
        assert len(rounds) == ROUNDS
        for result in rounds:
            assert_bit_identical(result, expected[name], name)


def test_eight_threads_with_split_batches_and_blas_at_one_thread():
    from fastrnn import _parallel
    work = jobs(split=True)
    assert len(work) == N_THREADS
    assert len(_parallel.parts(16, 30, 16, 64, 4)) == 2          # the LSTM job is split
    with threadpool_limits(1):
        expected = {name: fn() for name, fn in work.items()}
        got = run_concurrently(work)
    for name, rounds in got.items():
        for result in rounds:
            assert_bit_identical(result, expected[name], name)


@pytest.mark.parametrize("backend", NATIVE)
def test_a_layer_shared_by_eight_threads(backend):
    """Each thread has its own input, state, lengths and mode (half train and
    backpropagate, half only infer); all use the same layer at once."""
    layer = fastrnn.LSTM(6, 10, num_layers=2, bidirectional=True, batch_first=True,
                         dtype=np.float32, backend=backend, rng=0)
    rng = np.random.default_rng(2)
    inputs = []
    for i in range(N_THREADS):
        B, T = 1 + i % 4, 4 + 3 * i
        x = rng.standard_normal((B, T, 6)).astype(np.float32)
        hx = tuple(rng.standard_normal((4, B, 10)).astype(np.float32) for _ in range(2))
        dy = rng.standard_normal((B, T, 20)).astype(np.float32)
        inputs.append((x, hx, make_lengths("mixed", T, B, seed=i), dy, i % 2 == 0))

    def call(x, hx, lengths, dy, training):
        if not training:
            return layer(x, hx, lengths)
        y, h, ctx = layer(x, hx, lengths, training=True)
        g = layer.backward(ctx, dy, h)
        return y, h, g.dx, g.dhx, g.dparams
    fns = {i: (lambda a=a: call(*a)) for i, a in enumerate(inputs)}
    expected = {i: fn() for i, fn in fns.items()}
    got = run_concurrently(fns)
    for i, rounds in got.items():
        for result in rounds:
            assert_bit_identical(result, expected[i], f"thread {i}")

