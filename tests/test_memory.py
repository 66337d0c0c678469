"""Memory: repeated calls do not grow the process, and a training workspace
is freed as soon as nothing refers to it.

- 10,000 forward (training) + backward calls per native backend: the resident
  set size (RSS, from /proc/self/statm) has no upward slope after warm-up.
  RSS sees what Python's own accounting cannot (native allocations).
- The same calls under tracemalloc, which NumPy reports its array buffers to:
  the traced memory returns to where it was, to the byte pattern of a few
  Python objects.
- A Workspace (kernel functions) or a Context (layers) frees every buffer the
  forward allocated as soon as it is dropped: by reference counting, with the
  cyclic garbage collector disabled, so they form no reference cycles.
"""
import gc
import os
import tracemalloc
import weakref

import numpy as np
import pytest

import fastrnn
from conftest import (CELLS, make_layer, make_lengths, make_params,
                      make_states, make_x, run_backward, run_forward)

NATIVE = [b for b in ("cython", "numba") if b in fastrnn.available_backends()]
T, B, I, H = 3, 2, 4, 5


def rss_bytes():
    """The process's resident set size, from /proc/self/statm (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def workloads(backend):
    """One tiny forward (training) + backward per cell and dtype, as functions."""
    fns = []
    for cell in CELLS:
        for dtype in (np.float32, np.float64):
            x = make_x(T, B, I, dtype)
            states = make_states(cell, B, H, dtype)
            params = make_params(cell, I, H, dtype)
            dy = np.ones((T, B, H), dtype)
            lengths = make_lengths("mixed", T, B)

            def run(cell=cell, x=x, states=states, params=params, dy=dy, lengths=lengths):
                out = run_forward(cell, backend, x, states, params, lengths=lengths,
                                  training=True)
                run_backward(cell, out.workspace, dy)
            fns.append(run)
    return fns


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="RSS is read from /proc/self/statm (Linux)")


@needs_proc
@pytest.mark.parametrize("backend", NATIVE)
def test_ten_thousand_calls_do_not_grow_the_process(backend):
    """RSS sampled every 250 of 10,000 forward + backward calls; the slope of a
    least-squares line over the later 5,000 calls, times 5,000, must be under
    1 MiB.

    Why 1 MiB: a call here allocates about 3 KB of arrays (outputs, workspace,
    gradients and scratch); leaking any one of them with its array object
    (>= 200 bytes) would add >= 1 MB over 5,000 calls, leaking the workspace
    15 MB. Without a leak RSS still moves by the allocators' granularity
    (pymalloc arenas of 256 KiB, glibc trimming its heap), a few hundred KiB
    up or down at most, which a slope over 20 samples spreads out. Measured:
    0 and 6 KiB (Cython, Numba); with a 16-float array leaked per call, 1.3 MiB.
    """
    fns = workloads(backend)
    n_calls, every = 10_000, 250
    samples = []
    gc.collect()
    for i in range(n_calls):
        fns[i % len(fns)]()
        if (i + 1) % every == 0:
            samples.append((i + 1, rss_bytes()))
    calls, rss = np.array(samples, dtype=float).T
    later = calls > n_calls // 2
    slope = np.polyfit(calls[later], rss[later], 1)[0]
    growth = slope * (n_calls // 2)
    assert growth < 2**20, (f"RSS grows by {growth / 2**20:.2f} MiB per 5,000 calls; "
                            f"samples (MiB): {np.round(rss / 2**20, 2).tolist()}")


@pytest.mark.parametrize("backend", fastrnn.available_backends())
def test_calls_leave_no_traced_allocation_behind(backend):
    """tracemalloc (which sees NumPy's buffers): once warm, 1,000 more calls
    leave less than 16 bytes per call behind, in one of two windows of 1,000.

    Warm-up happens while tracing, for 1,000 calls: caches that fill on first
    use (NumPy's small-array cache, Numba's type cache of array flags) grow for
    the first few hundred traced calls and then stop; after that 1,000 calls
    moved the traced total by 0-4.3 kB (free lists). Any leaked Python object
    is at least 16 bytes, and the smallest array a call allocates (lengths,
    (B,) intp) is 16 bytes of data plus a 100-byte object: leaking it once
    per call would leave 116 kB in every window. A cache that still grows
    once after the warm-up does so in one window only: once, in a fresh
    venv's first run of the suite (Numba compiling and caching from scratch),
    a window of Numba calls kept 19,127 bytes, and reruns 0.8-2.5 kB.
    """
    fns = workloads(backend)
    for fn in fns:                         # compilation, outside the trace
        fn()
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(1000):
            fns[i % len(fns)]()
        gc.collect()
        kept = []
        for window in range(2):
            before = tracemalloc.get_traced_memory()[0]
            for i in range(1000):
                fns[i % len(fns)]()
            gc.collect()
            kept.append(tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()
    assert min(kept) < 16_000, f"bytes kept by each window of 1,000 calls: {kept}"


def allocated_arrays(data, inputs):
    """The arrays of a workspace's data that the forward allocated (not the caller's)."""
    found, todo = [], [data]
    while todo:                   # (no recursive closure: that would be a reference cycle)
        obj = todo.pop()
        if isinstance(obj, np.ndarray):
            if obj.size and not any(np.shares_memory(obj, a) for a in inputs):
                found.append(obj)
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            todo.extend(obj)
    return found


@pytest.fixture
def no_cycle_collector():
    """Only reference counting frees objects while the test runs."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.parametrize("cell", CELLS)
def test_a_dropped_workspace_is_freed(backend, cell, no_cycle_collector):
    x = make_x(6, 3, I, np.float64)
    states = make_states(cell, 3, H, np.float64)
    params = make_params(cell, I, H, np.float64)
    out = run_forward(cell, backend, x, states, params, training=True)
    owned = allocated_arrays(out.workspace.data, (x,) + states + params)
    assert owned, "the workspace holds buffers of its own"
    refs = [weakref.ref(a) for a in owned]
    del owned
    grads = run_backward(cell, out.workspace, np.ones_like(out.y))
    assert all(r() is not None for r in refs)      # kept until dropped, backward or not
    del out
    assert all(r() is None for r in refs)
    assert grads.dx.shape == x.shape


@pytest.mark.parametrize("cell", CELLS)
def test_a_dropped_context_frees_its_workspaces(backend, cell, no_cycle_collector):
    """A training forward of a stacked bidirectional layer with dropout keeps
    ctx.nbytes in its Context; all of it is gone once the Context is dropped,
    also after a backward, as tracemalloc confirms."""
    # B * H * 8 bytes >= 1 KiB: every per-step array of the reference's tape is
    # above the size NumPy keeps freed buffers of in its cache (still traced)
    layer = make_layer(cell, I, 16, 2, bidirectional=True, dropout=0.5, dtype=np.float64,
                       backend=backend, rng=0)
    x = make_x(10, 16, I, np.float64)
    dy = np.ones_like(layer(x)[0])

    def cycle():
        y, h, ctx = layer(x, training=True, rng=1)
        layer.backward(ctx, dy)
    cycle()                                           # compilation, outside the trace
    tracemalloc.start()
    try:
        for _ in range(5):                            # caches that fill on first use
            cycle()
        baseline = tracemalloc.get_traced_memory()[0]
        y, h, ctx = layer(x, training=True, rng=1)
        nbytes = ctx.nbytes
        held = tracemalloc.get_traced_memory()[0] - baseline
        inputs = (x,) + tuple(layer.parameters())
        owned = [a for ws in ctx.workspaces for a in allocated_arrays(ws.data, inputs)]
        owned += ctx.dropout_masks
        refs = [weakref.ref(a) for a in owned]
        del owned
        grads = layer.backward(ctx, dy)
        del ctx, y, h, grads
        freed = [r() is None for r in refs]
        del refs                                      # (the test's own allocation)
        released = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert held > 100_000
    if backend != "reference":             # the reference's tape also counts views
        assert held >= nbytes > 0
    assert all(freed)
    # of the 130-750 kB held, nothing is left but Python's free lists (tuples,
    # dicts and frames keep freed blocks for reuse, still traced): measured
    # 1.5-3.3 kB for the native backends, 11-14 kB for the reference's tape
    assert released < 0.05 * held, (held, released)



@pytest.mark.parametrize("count", [1, 15, 16, 1000, 4096, 40_000, 300_000])
def test_panels_start_on_a_cache_line(count):
    """Packed panels start on a 64-byte line, small (NumPy's 16-byte aligned
    memory) or large (the cache's), and hold exactly ``count`` floats."""
    from fastrnn import _buffers
    keep = [np.empty(k, np.float32) for k in (1, 3, 5, 7)]     # vary NumPy's offsets
    for _ in range(4):
        a = _buffers.panels(count)
        assert a.shape == (count,) and a.dtype == np.float32 and a.flags.c_contiguous
        assert a.ctypes.data % _buffers.PANEL_ALIGN == 0
        keep.append(a)
        keep.append(np.empty(3, np.float32))


def test_backends_pack_onto_cache_lines(backend):
    """Both native backends' panels (W_hh^T forward and W_hh backward, W_ih^T),
    and so a frozen layer's, which keep them for every later call."""
    if backend == "reference":
        pytest.skip("the reference packs nothing")
    layer = fastrnn.RNN(24, 64, backend=backend, rng=0)
    ice = layer.freeze()
    x = np.random.default_rng(0).standard_normal((40, 1, 24)).astype(np.float32)
    ice(x)
    derived = ice._layer._params_cache[0].prepared
    panels = [a for key, a in derived.items() if isinstance(key, tuple)]
    assert panels
    for a in panels:
        assert a.ctypes.data % 64 == 0
