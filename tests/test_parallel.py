"""Batch splitting (fastrnn/_parallel.py): the same answers, bit for bit, on any thread count.

The split normally starts at sizes too large for a quick test; the fixture
lowers the thresholds so that small odd batches are split too.
"""
import numpy as np
import pytest

import fastrnn
from conftest import CELLS, DTYPES, arrays_of, make_lengths
from fastrnn import _parallel
from test_backends import assert_matches, forward_backward, make_case, reference64

NATIVE = [b for b in fastrnn.available_backends() if b != "reference"]


@pytest.fixture
def split_small(monkeypatch):
    """Split every batch of 2 rows or more; restore the thread count afterwards."""
    monkeypatch.setattr(_parallel, "SPLIT_MIN_B", 2)
    monkeypatch.setattr(_parallel, "SPLIT_MIN_MACS", 0)
    threads = _parallel.get_num_threads()
    yield
    _parallel.set_num_threads(threads)


def test_parts_depend_on_the_shape_only():
    assert _parallel.parts(1, 100, 512, 512, 4) == [(0, 1)]           # one row: no split
    assert _parallel.parts(64, 100, 512, 512, 4) == [(0, 32), (32, 64)]
    assert _parallel.parts(9, 100, 512, 512, 4) == [(0, 5), (5, 9)]
    assert _parallel.parts(64, 1, 512, 512, 4) == [(0, 64)]          # one step: no gain
    assert _parallel.parts(8, 100, 2, 2, 1) == [(0, 8)]               # too little work


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("lengths_kind", [None, "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("cell", CELLS)
def test_split_batch_matches_reference(split_small, backend, cell, dtype, reverse,
                                       lengths_kind):
    T, B, I, H = 4, 7, 5, 6
    x, states, params, dy, dstates = make_case(cell, (T, B, I, H), dtype)
    kw = dict(lengths=make_lengths(lengths_kind, T, B), reverse=reverse)
    out, grads = forward_backward(cell, backend, x, states, params, dy, dstates, **kw)
    assert out.workspace.data["split"] == [(0, 4), (4, 7)]
    ref, ref_grads = reference64(cell, x, states, params, dy, dstates, **kw)
    assert_matches(out, ref, dtype)
    assert_matches(grads, ref_grads, dtype)


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("cell", CELLS)
def test_thread_count_does_not_change_a_bit(split_small, backend, cell):
    T, B, I, H = 5, 9, 7, 11
    x, states, params, dy, dstates = make_case(cell, (T, B, I, H), np.float32)
    kw = dict(lengths=make_lengths("mixed", T, B))
    results = []
    for threads in (1, 2, 3):
        _parallel.set_num_threads(threads)
        out, grads = forward_backward(cell, backend, x, states, params, dy, dstates, **kw)
        results.append({**arrays_of(out), **arrays_of(grads)})
    for other in results[1:]:
        for name, a in results[0].items():
            assert np.array_equal(a, other[name]), name


def test_blas_threads_are_restored(split_small):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    backend = NATIVE[0] if NATIVE else pytest.skip("no native backend")
    _parallel.set_num_threads(2)
    x, states, params, dy, dstates = make_case("lstm", (3, 4, 5, 6), np.float32)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = [i["num_threads"] for i in threadpoolctl.threadpool_info()
                  if i["user_api"] == "blas"]
        forward_backward("lstm", backend, x, states, params, dy, dstates)
        after = [i["num_threads"] for i in threadpoolctl.threadpool_info()
                 if i["user_api"] == "blas"]
    assert after == before


def blas_counts(threadpoolctl):
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def test_blas_hold_counts_its_holders():
    """Every BLAS at one thread from the first holder in to the last one out,
    then the counts it found."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    hold = _parallel.blas_hold()
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = blas_counts(threadpoolctl)
        assert before and set(before) == {2}
        with hold:
            assert set(blas_counts(threadpoolctl)) == {1}
            with hold:                  # a second call, from another thread
                assert set(blas_counts(threadpoolctl)) == {1}
            assert set(blas_counts(threadpoolctl)) == {1}
        assert blas_counts(threadpoolctl) == before


def test_blas_hold_calls_openblas_from_c_where_it_can():
    """With the Cython build and every BLAS an OpenBLAS whose own thread-count
    functions it finds, the hold calls them from C (``blas_threads.Hold``)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if "cython" not in fastrnn.available_backends():
        pytest.skip("the Cython extension is not built")
    infos = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    if not infos or any(i["internal_api"] != "openblas" or i.get("threading_layer") == "openmp"
                        for i in infos):
        pytest.skip("a BLAS other than a pthreads OpenBLAS is loaded")
    from fastrnn._ext.blas_threads import Hold
    assert isinstance(_parallel.blas_hold(), Hold)


def test_blas_hold_refuses_functions_it_cannot_call():
    if "cython" not in fastrnn.available_backends():
        pytest.skip("the Cython extension is not built")
    from fastrnn._ext.blas_threads import Hold
    with pytest.raises(ValueError, match="must have addresses"):
        Hold([(0, 1)])
    with pytest.raises(ValueError, match="at most 8 BLAS libraries"):
        Hold([(1, 1)] * 9)


def test_python_blas_hold_counts_its_holders():
    """The hold for BLAS libraries only threadpoolctl can set, with fake ones."""
    counts = [3, 1]
    handles = [(lambda i=i: counts[i], lambda n, i=i: counts.__setitem__(i, n))
               for i in range(2)]
    hold = _parallel._OneBlasThread(handles)
    with hold:
        assert counts == [1, 1]
        with hold:
            assert counts == [1, 1]
        assert counts == [1, 1]
    assert counts == [3, 1]
    hold.__enter__()
    assert counts == [1, 1]
    hold.reset()                    # in a forked child: the holders were the parent's
    assert counts == [3, 1]         # ... and never leave: the counts come back
    counts[:] = [4, 4]
    with hold:
        assert counts == [1, 1]
    assert counts == [4, 4]


def test_a_child_forked_inside_a_call_gets_its_blas_threads_back(tmp_path):
    """A process forked while another thread is inside a native call: the
    child's BLAS counts, held at one by that call, are the parent's own."""
    pytest.importorskip("threadpoolctl")
    import os
    import subprocess
    import sys
    import textwrap
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    script = tmp_path / "fork_in_hold.py"
    script.write_text(textwrap.dedent('''
        import os
        import threadpoolctl
        import fastrnn
        from fastrnn import _parallel

        def counts():
            return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                    if i["user_api"] == "blas"]

        fastrnn.LSTM(3, 4)(__import__("numpy").zeros((2, 1, 3), "float32"))
        with threadpoolctl.threadpool_limits(2, user_api="blas"):
            before = counts()
            with _parallel.blas_hold():         # a call in progress
                pid = os.fork()
                if pid == 0:
                    os._exit(0 if counts() == before else 1)
                _, status = os.waitpid(pid, 0)
            assert counts() == before
        print("ok" if os.waitstatus_to_exitcode(status) == 0 else "child kept one thread")
    '''))
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok", done.stdout


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_set_num_threads_rejects_non_positive_integers(bad):
    with pytest.raises(ValueError, match="n must be a positive integer number of threads"):
        fastrnn.set_num_threads(bad)


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("cell", CELLS)
def test_blas_thread_count_does_not_change_a_bit(backend, cell):
    """Native calls hold BLAS at one thread, so the user's BLAS setting changes no bit.

    (30, 8, 16, 32) is a shape where OpenBLAS's float32 GEMM itself rounds
    differently on 1 and 2 threads (tools/blas_threads_determinism.py).
    """
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x, states, params, dy, dstates = make_case(cell, (30, 8, 16, 32), np.float32)
    results = []
    for blas_threads in (1, 2):
        with threadpoolctl.threadpool_limits(blas_threads, user_api="blas"):
            out, grads = forward_backward(cell, backend, x, states, params, dy, dstates)
        results.append({**arrays_of(out), **arrays_of(grads)})
    for name, a in results[0].items():
        assert np.array_equal(a, results[1][name]), name


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("packed_max_b", [32, 4], ids=["packed", "largest-part-too-big"])
@pytest.mark.parametrize("cell", CELLS)
def test_parts_share_one_prepared_w_hh(split_small, monkeypatch, backend, cell, packed_max_b):
    """The parts of a split batch share W_hh as prepared once, forward and backward.

    With ``PACKED_MAX_B`` 4, the parts of 5 and 4 rows take the path of the
    larger one (BLAS), and both must still be right.
    """
    if backend == "cython":
        from fastrnn import _cython_backend as module
        packing = module._packing
    else:
        from fastrnn import _numba_backend as module
        packing = module._k
    monkeypatch.setattr(module, "PACKED_MAX_B", packed_max_b)
    monkeypatch.setattr(module, "PREPARE_MIN_T", 1)
    packs = []
    real_pack = packing.pack
    monkeypatch.setattr(packing, "pack",
                        lambda *a: (packs.append((a[0].size, a[1])), real_pack(*a))[1])
    T, B, I, H = 4, 9, 5, 6
    x, states, params, dy, dstates = make_case(cell, (T, B, I, H), np.float32)
    out, grads = forward_backward(cell, backend, x, states, params, dy, dstates)
    assert out.workspace.data["split"] == [(0, 5), (5, 9)]
    # one forward (W_hh^T, trans) and one backward (W_hh) packing, not one per
    # part; the Cython backend's forward packs W_ih^T too (PROJECT_PACKED)
    GH = params[1].shape[0]
    forward = [(GH * H, True), (GH * I, True)] if backend == "cython" else [(GH * H, True)]
    assert packs == (forward + [(GH * H, False)] if packed_max_b == 32 else [])
    ref, ref_grads = reference64(cell, x, states, params, dy, dstates)
    assert_matches(out, ref, np.float32)
    assert_matches(grads, ref_grads, np.float32)


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("cell", CELLS)
def test_a_part_writes_its_rows_of_y_in_place(backend, cell, dtype, training):
    """A part of a split batch writes its rows of the whole batch's y (the
    backends' ``y=``): the bits of a y of its own, and no other row touched."""
    module = fastrnn._backends.get(backend).module
    T, B, I, H = 6, 5, 7, 9                 # 6 steps: W_hh is prepared (packed in float32)
    x, states, params, _, _ = make_case(cell, (T, B, I, H), dtype)
    lengths = make_lengths("mixed", T, B)
    alone = module.forward(cell, x, states, params, lengths, False, training)
    whole = np.full((T, B + 3, H), np.nan, dtype)
    part = module.forward(cell, x, states, params, lengths, False, training,
                          y=whole[:, 2:2 + B])
    assert np.shares_memory(part[0], whole)
    np.testing.assert_array_equal(whole[:, 2:2 + B], alone[0])
    assert np.isnan(whole[:, :2]).all() and np.isnan(whole[:, 2 + B:]).all()
    for a, b in zip(part[1], alone[1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("cell", CELLS)
def test_a_part_reads_its_rows_of_dy_in_place(backend, cell, dtype):
    """A part of a split batch reads its rows of the whole batch's dy (steps
    further apart than its B*H): the bits of a contiguous copy."""
    module = fastrnn._backends.get(backend).module
    T, B, I, H = 6, 5, 7, 9
    x, states, params, _, dstates = make_case(cell, (T, B, I, H), dtype)
    lengths = make_lengths("mixed", T, B)
    whole = np.random.default_rng(3).standard_normal((T, B + 3, H)).astype(dtype)
    rows = whole[:, 2:2 + B]
    results = []
    for dy in (np.ascontiguousarray(rows), rows):
        _, _, data = module.forward(cell, x, states, params, lengths, False, True)
        results.append(module.backward(cell, data, dy, dstates))
    (dx0, ds0, dp0), (dx1, ds1, dp1) = results
    for a, b in zip((dx0, *ds0, *dp0), (dx1, *ds1, *dp1)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_cython_rejects_a_y_or_dy_whose_rows_are_not_contiguous(cell):
    if "cython" not in NATIVE:
        pytest.skip("the Cython backend is not built")
    module = fastrnn._backends.get("cython").module
    T, B, I, H = 4, 3, 5, 6
    x, states, params, _, dstates = make_case(cell, (T, B, I, H), np.float32)
    strided = np.ones((T, B, 2 * H), np.float32)[:, :, ::2]
    with pytest.raises(ValueError, match=r"y must be \(4, 3, 6\) with each step's rows"):
        module.forward(cell, x, states, params, None, False, False, y=strided)
    with pytest.raises(ValueError, match=r"y must be \(4, 3, 6\)"):
        module.forward(cell, x, states, params, None, False, False,
                       y=np.empty((T, B + 1, H), np.float32))
    _, _, data = module.forward(cell, x, states, params, None, False, True)
    with pytest.raises(ValueError, match=r"dy must be \(4, 3, 6\) with each step's rows"):
        module.backward(cell, data, strided, dstates)


@pytest.mark.parametrize("backend", NATIVE + ["reference"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_directions_side_by_side_give_the_bits_of_one_thread(monkeypatch, backend, cell):
    """A bidirectional layer runs its two directions on two threads, each with
    its share of fastrnn's threads (``run_independent``), forward and
    backward: the bits are those of one thread running them in turn, and the
    second direction really ran beside the first."""
    import threading
    from fastrnn import kernels
    make = {"rnn_tanh": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell]
    layer = make(7, 16, num_layers=2, bidirectional=True, dtype=np.float32, backend=backend,
                 rng=0)
    rng = np.random.default_rng(1)
    T, B = 9, 3
    x = rng.standard_normal((T, B, 7)).astype(np.float32)
    dy = rng.standard_normal((T, B, 32)).astype(np.float32)
    lengths = make_lengths("mixed", T, B)
    seen = []
    real = kernels._run

    def spy(*args, **kw):
        seen.append((threading.get_ident(), _parallel.call_threads()))
        return real(*args, **kw)
    monkeypatch.setattr(kernels, "_run", spy)
    monkeypatch.setattr(_parallel, "INDEPENDENT_MIN_MACS", 0)
    threads = _parallel.get_num_threads()

    def run(n):
        _parallel.set_num_threads(n)
        y, h, ctx = layer(x, None, lengths, training=True)
        g = layer.backward(ctx, dy)
        return [y, *(h if isinstance(h, tuple) else (h,)), g.dx,
                *(g.dhx if isinstance(g.dhx, tuple) else (g.dhx,)), *g.dparams.values()]
    try:
        one = run(1)
        assert len({t for t, _ in seen}) == 1 and {n for _, n in seen} == {1}
        seen.clear()
        two = run(2)
    finally:
        _parallel.set_num_threads(threads)
    # the caller runs one direction of each layer, a thread of fastrnn's pool the other
    assert len(seen) == 4 and len({t for t, _ in seen}) >= 2, "the directions ran on one thread"
    assert {n for _, n in seen} == {1}, "each direction has one of the two threads"
    assert _parallel.call_threads() == _parallel.get_num_threads()     # the share is undone
    for a, b in zip(one, two):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_small_directions_run_one_after_the_other():
    """Calls too small to repay a thread run in turn, each with all threads."""
    seen = []

    def call(k):
        seen.append(_parallel.call_threads())
        return k
    threads = _parallel.get_num_threads()
    _parallel.set_num_threads(2)
    try:
        assert _parallel.run_independent(call, 2, _parallel.INDEPENDENT_MIN_MACS - 1) == [0, 1]
        assert seen == [2, 2]
        seen.clear()
        assert _parallel.run_independent(call, 2, _parallel.INDEPENDENT_MIN_MACS) == [0, 1]
        assert seen == [1, 1]
    finally:
        _parallel.set_num_threads(threads)
