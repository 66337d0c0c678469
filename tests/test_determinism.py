"""Determinism: the same inputs give the same bits.

- Run to run in one process, and in a new process, for every cell, dtype,
  native backend and internal path (packed float32 product, K-major W_hh,
  several input-projection chunks, projection, reverse, lengths): outputs and
  every gradient are bit-identical. Nothing in the kernels depends on timing:
  no atomics, no reductions in thread order, no uninitialised memory read.
- Reruns with the same number of BLAS threads (1 and 2, set with
  threadpoolctl) are bit-identical.
- Across BLAS thread counts, float64 results are bit-identical here, while
  OpenBLAS's float32 GEMM (sgemm) gives results that differ in the last bits
  for some shapes between 1 and 2 threads, so float32 weight gradients can
  too (a few ulps, measured in docs/reliability.md with
  tools/blas_threads_determinism.py). That is BLAS's choice, not fastrnn's.
- fastrnn's own threads do not change a bit: a large batch split into parts
  (``fastrnn.set_num_threads``) gives the same bits for 1, 2 or 3 threads and
  from any calling Python thread (its parts always run with BLAS at one
  thread); the packed float32 product split over OpenMP threads (off by
  default) computes each panel of W_hh whole on one thread, in the same order.
"""
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastrnn
from conftest import (arrays_of, make_lengths, make_params, make_projected_params,
                      make_projected_states, make_states, make_x, run_backward, run_forward)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATIVE = [b for b in ("cython", "numba") if b in fastrnn.available_backends()]

#: (cell, dtype, (T, B, I, H), proj, reverse): every path the kernels can take
CASES = [
    ("lstm", "float32", (30, 8, 16, 32), None, False),     # packed product
    ("lstm", "float32", (12, 5, 6, 10), 4, True),          # projection, reverse
    ("gru", "float64", (20, 40, 8, 16), None, True),       # K-major W_hh, B > 32
    ("gru", "float32", (6, 3, 5, 17), None, False),
    ("rnn_tanh", "float64", (70, 4, 3, 5), None, False),   # several projection chunks
    ("rnn_relu", "float32", (9, 300, 4, 6), None, True),   # wide batch, chunks
    ("lstm", "float64", (3, 2, 4, 5), None, False),        # short: weights read in place
    ("gru", "float32", (1, 1, 1, 1), None, True),
]


def case_id(c):
    cell, dtype, shape, proj, reverse = c
    return f"{cell}-{dtype}-T{shape[0]}B{shape[1]}" + (f"-P{proj}" if proj else "") + \
        ("-rev" if reverse else "")


def compute(backend, cell, dtype, shape, proj, reverse):
    """Outputs and gradients of one training forward + backward and one inference
    forward, as a list of arrays."""
    dtype = np.dtype(dtype)
    T, B, I, H = shape
    x = make_x(T, B, I, dtype)
    kw = {}
    if proj:
        states = make_projected_states(B, H, proj, dtype)
        params = make_projected_params(I, H, proj, dtype)
        kw["weight_hr"] = params[4]
        params = params[:4]
    else:
        states = make_states(cell, B, H, dtype)
        params = make_params(cell, I, H, dtype)
    rng = np.random.default_rng(9)
    dy = rng.standard_normal((T, B, proj or H)).astype(dtype)
    dstates = tuple(rng.standard_normal(s.shape).astype(dtype) for s in states)
    lengths = make_lengths("mixed", T, B)
    out = run_forward(cell, backend, x, states, params, lengths=lengths, reverse=reverse,
                      training=True, **kw)
    grads = run_backward(cell, out.workspace, dy, dstates)
    inference = run_forward(cell, backend, x, states, params, lengths=lengths,
                            reverse=reverse, **kw)
    return [a for r in (out, grads, inference) for a in arrays_of(r).values() if a is not None]


def digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def assert_identical(got, expected, what):
    assert len(got) == len(expected), what
    for i, (a, e) in enumerate(zip(got, expected)):
        assert a.dtype == e.dtype and a.shape == e.shape, (what, i)
        assert np.array_equal(a, e), (what, i, float(np.max(np.abs(a - e))))


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("backend", NATIVE)
def test_reruns_are_bit_identical(backend, case):
    first = compute(backend, *case)
    for _ in range(3):
        assert_identical(compute(backend, *case), first, "rerun")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend", NATIVE)
def test_reruns_with_the_same_blas_threads_are_bit_identical(backend, threads):
    with threadpool_limits(threads):
        first = {case_id(c): compute(backend, *c) for c in CASES}
        for _ in range(2):
            for c in CASES:
                assert_identical(compute(backend, *c), first[case_id(c)], case_id(c))


@pytest.mark.parametrize("backend", NATIVE)
def test_float64_is_bit_identical_for_one_or_two_blas_threads(backend):
    """Holds for the OpenBLAS builds of SciPy and NumPy measured here; float32
    does not, for some GEMM shapes (see the module docstring)."""
    for c in CASES:
        if c[1] != "float64":
            continue
        with threadpool_limits(1):
            one = compute(backend, *c)
        with threadpool_limits(2):
            two = compute(backend, *c)
        assert_identical(two, one, case_id(c))


CHILD = """
    import json, sys
    sys.path.insert(0, {tests!r})
    import test_determinism as t
    print(json.dumps({{f"{{b}}/{{t.case_id(c)}}": t.digest(t.compute(b, *c))
                       for b in t.NATIVE for c in t.CASES}}))
"""


def test_a_new_process_computes_the_same_bits():
    """Another interpreter (new allocations, addresses, Numba loaded from its
    cache) gives the same digest of every array."""
    env = dict(os.environ)
    # the fastrnn this process imported: the installed one in CI, whose
    # source checkout (ROOT) has no built extensions
    installed = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [installed, env.get("PYTHONPATH")]))
    code = textwrap.dedent(CHILD.format(tests=os.path.join(ROOT, "tests")))
    # run from tests/: `python -c` puts the working directory first on
    # sys.path, and a source checkout there would shadow the installed package
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=600, cwd=os.path.join(ROOT, "tests"))
    assert out.returncode == 0, out.stderr
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    ours = {f"{b}/{case_id(c)}": digest(compute(b, *c)) for b in NATIVE for c in CASES}
    assert sorted(theirs) == sorted(ours)       # both processes ran every backend
    assert theirs == ours


@pytest.mark.skipif("cython" not in fastrnn.available_backends(), reason="needs Cython")
def test_the_packed_product_split_over_threads_gives_the_same_bits(monkeypatch):
    """The Cython packed float32 product can split W_hh's panels over OpenMP
    threads (PARALLEL_MIN_MACS, off by default): forced on, with 2 and 3
    threads, every bit is the same as with one."""
    from fastrnn import _cython_backend
    packed = [c for c in CASES if c[1] == "float32" and c[2][0] >= 4 and c[2][1] <= 32]
    assert packed
    expected = {case_id(c): compute("cython", *c) for c in packed}
    monkeypatch.setattr(_cython_backend, "PARALLEL_MIN_MACS", 0)
    for n in (2, 3):
        monkeypatch.setattr(_cython_backend, "_cores", lambda n=n: n)
        for c in packed:
            assert_identical(compute("cython", *c), expected[case_id(c)], (n, case_id(c)))


#: shapes the default thresholds split in two, with GEMMs whose float32 bits
#: differ between 1 and 2 OpenBLAS threads (tools/blas_threads_determinism.py)
SPLIT_CASES = [
    ("lstm", "float32", (30, 16, 16, 64), None, False),
    ("gru", "float32", (20, 16, 32, 128), None, True),
    ("rnn_tanh", "float32", (10, 32, 64, 64), None, False),
]


@pytest.fixture
def restore_threads():
    from fastrnn import _parallel
    n = _parallel.get_num_threads()
    yield _parallel
    _parallel.set_num_threads(n)


@pytest.mark.parametrize("backend", NATIVE)
def test_a_split_batch_gives_the_same_bits_on_any_threads(backend, restore_threads):
    """fastrnn.set_num_threads(1, 2, 3), and the call made from another Python
    thread: the same bits. (Two faults made them differ at these shapes: with
    one thread the parts ran with BLAS's own threads, and threadpoolctl
    ignored the BLAS pin when another Python thread had set BLAS before.)"""
    _parallel = restore_threads
    for cell, dtype, shape, proj, reverse in SPLIT_CASES:
        T, B, I, H = shape
        G = {"lstm": 4, "gru": 3}.get(cell, 1)
        assert len(_parallel.parts(B, T, I, H, G)) == 2, "the default thresholds split it"
    expected = {case_id(c): compute(backend, *c) for c in SPLIT_CASES}
    for n in (1, 2, 3):
        fastrnn.set_num_threads(n)
        for c in SPLIT_CASES:
            assert_identical(compute(backend, *c), expected[case_id(c)], (n, case_id(c)))
    fastrnn.set_num_threads(2)
    got = {}
    worker = threading.Thread(target=lambda: got.update(
        {case_id(c): compute(backend, *c) for c in SPLIT_CASES}))
    worker.start()
    worker.join()
    for c in SPLIT_CASES:
        assert_identical(got[case_id(c)], expected[case_id(c)], ("another thread", case_id(c)))
