"""fastrnn's cache of array memory (src_ext/pool.pyx, ``_buffers.empty``).

Large arrays of native calls live in memory that returns to the cache when
the last array using it is gone, and later calls reuse it. What must hold:
memory is reused only once nothing can see it; the cache stays within its
limit; tracemalloc sees the arrays as it sees NumPy's; and the kernels never
depend on what reused memory held (np.empty semantics), which poisoning the
cache with NaN checks end to end.
"""
import threading
import tracemalloc

import numpy as np
import pytest

import fastrnn
from conftest import CELLS, make_lengths
from fastrnn import _buffers
from test_backends import assert_matches, forward_backward, make_case, reference64

pool = pytest.importorskip("fastrnn._ext.pool", reason="the Cython extension is not built")

MiB = 1 << 20
NATIVE = [b for b in fastrnn.available_backends() if b != "reference"]


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts from an empty cache with the default limit, and leaves one."""
    old = pool.set_limit(pool.DEFAULT_LIMIT)
    pool.empty()
    yield
    pool.set_limit(old)
    pool.empty()


def address(a):
    return a.__array_interface__["data"][0]


def test_large_arrays_come_from_the_cache_and_small_ones_from_numpy():
    a = _buffers.empty((3, 512, 257), np.float32)
    assert a.shape == (3, 512, 257) and a.dtype == np.float32
    assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
    assert not a.flags.owndata and address(a) % 64 == 0
    a[...] = 1.5                                  # every byte writable
    assert a.sum() == 1.5 * a.size
    small = _buffers.empty((10, 10), np.float64)
    assert small.flags.owndata
    assert _buffers.empty((0, 5), np.float32).shape == (0, 5)
    assert _buffers.empty((MiB,), np.uint8).shape == (MiB,)


def test_freed_memory_is_reused_by_the_next_array_of_about_its_size():
    a = _buffers.empty((2 * MiB,), np.float32)    # 8 MiB
    where = address(a)
    assert pool.cached_bytes() == 0
    del a
    assert pool.cached_bytes() == 8 * MiB
    b = _buffers.empty((3 * MiB,), np.float16)    # 6 MiB: at most 2x smaller, reuses it
    assert address(b) == where and pool.cached_bytes() == 0
    del b
    c = _buffers.empty((MiB,), np.float32)        # 4 MiB: not more than 2x smaller? 8 <= 2*4
    assert address(c) == where
    del c
    d = _buffers.empty((MiB // 2,), np.float32)   # 2 MiB: the 8 MiB block is too wasteful
    assert address(d) != where
    assert pool.cached_bytes() == 8 * MiB


def test_memory_is_reused_only_when_no_view_of_it_is_left():
    a = _buffers.empty((4, MiB), np.float32)
    where = address(a)
    view = a[1:3]
    del a
    assert pool.cached_bytes() == 0               # the view holds the block
    b = _buffers.empty((4, MiB), np.float32)
    assert address(b) != where
    view[...] = 7
    del b
    assert address(view) == where + 4 * MiB and (view == 7).all()
    del view
    assert pool.cached_bytes() == 2 * 16 * MiB


def test_the_cache_keeps_at_most_its_limit_dropping_the_least_recently_freed():
    pool.set_limit(20 * MiB)
    arrays = [_buffers.empty((MiB,), np.float32) for _ in range(6)]     # 6 x 4 MiB
    addresses = [address(a) for a in arrays]
    while arrays:                                 # freed first to last
        arrays.pop(0)
    assert pool.cached_bytes() == 20 * MiB        # the first one freed was dropped
    taken = [_buffers.empty((MiB,), np.float32) for _ in range(5)]
    assert sorted(address(a) for a in taken) == sorted(addresses[1:])
    assert pool.cached_bytes() == 0
    del taken
    assert pool.set_limit(8 * MiB) == 20 * MiB
    assert pool.cached_bytes() == 8 * MiB
    big = _buffers.empty((3 * MiB,), np.float32)  # 12 MiB: more than the limit
    del big
    assert pool.cached_bytes() <= 8 * MiB
    fastrnn.empty_cache()
    assert pool.cached_bytes() == 0


def test_limit_zero_returns_every_array_to_the_c_library():
    fastrnn.set_cache_limit(0)
    a = _buffers.empty((2 * MiB,), np.float32)
    del a
    assert pool.cached_bytes() == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True, None])
def test_set_cache_limit_rejects_what_is_not_a_byte_count(bad):
    with pytest.raises(ValueError, match="n_bytes must be a non-negative integer"):
        fastrnn.set_cache_limit(bad)


def test_the_environment_sets_the_limit(monkeypatch):
    monkeypatch.setenv("FASTRNN_CACHE_LIMIT", str(3 * MiB))
    _buffers._limit_from_environment()
    assert pool.limit() == 3 * MiB
    monkeypatch.setenv("FASTRNN_CACHE_LIMIT", "lots")
    with pytest.raises(ValueError, match="FASTRNN_CACHE_LIMIT must be a non-negative"):
        _buffers._limit_from_environment()


def test_tracemalloc_sees_the_arrays_while_they_live():
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        a = _buffers.empty((3 * MiB,), np.float32)
        during = tracemalloc.get_traced_memory()[0]
        del a
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert during - before >= 12 * MiB
    assert abs(after - before) < 64 << 10


def test_threads_taking_and_freeing_keep_the_cache_consistent():
    pool.set_limit(64 * MiB)
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(200):
                n = int(rng.integers(MiB // 4, 3 * MiB))
                a = _buffers.empty((n,), np.float32)
                a[::4096] = seed
                assert (a[::4096] == seed).all()
        except Exception as exc:        # reported below, not lost in the thread
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert 0 < pool.cached_bytes() <= 64 * MiB


def poison_cache():
    """Fill the cache with NaN-filled blocks of 4 KiB to 8 MiB, powers of two,
    four of each, so every array of a call starts out holding NaN instead of
    fresh zero pages (a request takes a block of up to twice its size)."""
    held = []
    for k in range(12):
        for _ in range(4):
            a = _buffers.empty(((4096 << k) // 4,), np.float32)
            a[...] = np.nan
            held.append(a)
    del held


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_kernels_never_read_what_reused_memory_held(monkeypatch, backend, cell, dtype):
    """Every array of a split call (workspace, scratch, outputs, the parts'
    copies) from a cache poisoned with NaN: every output and gradient must
    still match the reference, the second time through memory the first
    call freed too."""
    from fastrnn import _parallel
    monkeypatch.setattr(_buffers, "POOLED_MIN_BYTES", 1)
    monkeypatch.setattr(_parallel, "SPLIT_MIN_MACS", 0)
    T, B, I, H = 9, 10, 7, 20
    x, states, params, dy, dstates = make_case(cell, (T, B, I, H), dtype)
    kw = dict(lengths=make_lengths("mixed", T, B))
    ref, ref_grads = reference64(cell, x, states, params, dy, dstates, **kw)
    for _ in range(2):
        poison_cache()
        out, grads = forward_backward(cell, backend, x, states, params, dy, dstates, **kw)
        assert out.workspace.data["split"] == [(0, 5), (5, 10)]
        assert not out.y.flags.owndata             # from the cache
        assert_matches(out, ref, dtype)
        assert_matches(grads, ref_grads, dtype)
        del out, grads
