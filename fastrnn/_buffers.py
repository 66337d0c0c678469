"""Buffers shared by the native backends (Cython and Numba).

Both backends lay out their outputs, workspace and scratch the same way (see
``fastrnn._cython_backend``); the allocation lives here once.
"""
import math
import os

import numpy as np

from .frozen import memo

try:
    from ._ext import pool as _pool
except ImportError:     # no Cython build (the Numba backend alone): NumPy's own memory
    _pool = None

#: arrays of at least this many bytes live in fastrnn's cache of reusable
#: memory (``src_ext/pool.pyx``); smaller ones the C library recycles well.
#: 128 KiB, glibc's default mmap threshold: from 1 MiB, arrays of 128 KiB-1 MiB
#: allocated on the parts' threads came from glibc's per-thread arenas, which
#: give freed memory back to the kernel, so the next call faulted its pages in
#: again (perf of the demo's GRU training: 34% in the kernel, page faults and
#: the locks of unmapping). The two alternating in one process (2 threads, 9
#: rounds): GRU (B, T, I, H) = (32, 64, 8, 64) training 1.75x (the demo's
#: batches: its GRU trains in 5.5 s instead of 8.3-9.0), LSTM and GRU latency
#: training 1.09-1.17x, the grid's other shapes 0.97-1.04x. 32 KiB against
#: 128: 0.90-1.07x, nothing gained.
POOLED_MIN_BYTES = 1 << 17


def set_cache_limit(n_bytes):
    """Keep at most ``n_bytes`` of freed array memory for reuse by later calls
    (0: none, every array's memory goes back to the C library when freed).

    The default is ``FASTRNN_CACHE_LIMIT`` if set, else 512 MiB. Returns the
    previous limit. Without the Cython extension there is no cache and this
    raises RuntimeError.
    """
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, (int, np.integer)) or n_bytes < 0:
        raise ValueError(f"n_bytes must be a non-negative integer, got {n_bytes!r}")
    if _pool is None:
        raise RuntimeError("fastrnn's memory cache needs the Cython extension, which is not built")
    return _pool.set_limit(int(n_bytes))


def empty_cache():
    """Free the array memory fastrnn keeps for reuse (arrays in use keep theirs)."""
    if _pool is not None:
        _pool.empty()


def _limit_from_environment():
    text = os.environ.get("FASTRNN_CACHE_LIMIT")
    if text is None or _pool is None:
        return
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"FASTRNN_CACHE_LIMIT must be a non-negative number of bytes, "
                         f"got {text!r}")
    _pool.set_limit(n)


_limit_from_environment()


def empty(shape, dtype):
    """``np.empty(shape, dtype)`` for a tuple ``shape``, in memory reused from
    earlier calls when large.

    Every array a native call allocates comes from here, outputs and workspace
    included: when the last array using the memory is gone, it returns to the
    cache instead of the C library, so the next call writes to pages that are
    already mapped (see ``src_ext/pool.pyx``).
    """
    # on the path of every call, streaming steps included: small arrays go
    # straight to NumPy, before anything but counting their elements
    count = math.prod(shape)
    if count < POOLED_MIN_BYTES // 8 or _pool is None:
        return np.empty(shape, dtype)
    nbytes = count * np.dtype(dtype).itemsize
    if nbytes < POOLED_MIN_BYTES:
        return np.empty(shape, dtype)
    return np.frombuffer(_pool.take(nbytes), dtype).reshape(shape)


#: bytes the packed panels' first element is aligned to: a cache line, so that
#: each 64-byte panel row the products load sits in one line
PANEL_ALIGN = 64


def panels(count):
    """``count`` float32 values for packed panels, their first a multiple of
    ``PANEL_ALIGN`` bytes into memory, from ``empty``.

    The cache hands out 64-byte aligned blocks, NumPy only 16-byte aligned
    arrays: packed panels starting 16 or 48 bytes past a line made every
    row the products load straddle two lines. RNN latency inference through
    a frozen layer (whose panels stay where they were first packed), 16
    frozen layers in one process: 87-90 us with its W_hh^T's panels on a
    line, 89-93 at 32 bytes past one, 99-104 at 16 or 48 (an ad-hoc
    script, median of 101 calls each).
    """
    extra = PANEL_ALIGN // 4
    raw = empty((count + extra,), np.float32)
    skip = (-raw.ctypes.data % PANEL_ALIGN) // 4
    return raw[skip:skip + count]


#: rows (steps * batch) per input-projection GEMM in inference (see ``chunk``)
CHUNK_ROWS = 1024


def chunk(T, B, GH):
    """Steps whose inputs one inference GEMM projects: memory stays O(B), not O(T).

    Each GEMM repacks W_ih (GH, I), a sizeable share of the GEMM itself
    unless it has many rows. On the AMD EPYC (AVX2), max(256, GH/2) rows, at
    most 1024, against 256 always: LSTM large inference 1.05-1.06x, GRU large
    1.06-1.08x, medium 0.98-1.02x. On the Intel Xeon (AVX-512), 1024 rows
    always against that (the two alternating in one process, 15 rounds,
    median of the per-round ratios): RNN large 1.05-1.08x, RNN medium
    1.04-1.05x, GRU medium 1.03-1.04x, every other grid shape 0.98-1.02x in
    inference and RNN training. The scratch is rows x GH values: at most
    8 MiB for an LSTM with H = 512.
    """
    return max(1, min(T, CHUNK_ROWS // B))


def prepared_w_hh(dtype, T, B, w_hh, trans, pack, packed_max_b, prepare_min_t, k_major,
                  params=None):
    """How a backend's kernels multiply by op(W_hh) each step, prepared once.

    The rule both native backends follow: nothing for calls of fewer than
    ``prepare_min_t`` steps (preparing costs about one step's product);
    ``packed`` panels, from the backend's own ``pack(w_hh, trans, K, N)``,
    for float32 batches of up to ``packed_max_b`` rows; else, for the
    forward's op(W_hh) = W_hh^T (``trans``) and if ``k_major``, a K-major
    copy ``w_hh_t``, which OpenBLAS's AVX2 kernels multiply faster than
    through its transpose flag (``K_MAJOR_COPY`` of each backend). op(W_hh)
    is (K, N): (H, G*H) forward, (G*H, H) backward. ``params``: the layer's
    parameters, ``w_hh`` their second; frozen ones (``fastrnn.frozen``) keep
    what is derived here for their later calls.
    """
    if T < prepare_min_t:
        return {}
    if dtype == np.float32 and B <= packed_max_b:
        return dict(packed=packed_panels(w_hh, "w_hh", trans, pack, params))
    if trans and k_major:
        return dict(w_hh_t=memo(params, "w_hh^T", lambda: np.ascontiguousarray(w_hh.T)))
    return {}


def packed_panels(w, name, trans, pack, params=None):
    """op(w)'s panels from a backend's ``pack(w, trans, K, N)``; ``w`` is
    ``params``' entry ``name`` ("w_hh", "w_ih"), and frozen ``params`` keep
    the panels for their later calls."""
    K, N = (w.shape[1], w.shape[0]) if trans else w.shape
    return memo(params, (pack, name, trans), lambda: pack(w, trans, K, N))


def bias_sum(params):
    """b_ih + b_hh, the one bias of an LSTM's or an RNN's projection (summed
    once for frozen ``params``)."""
    return memo(params, "b_ih + b_hh", lambda: params[2] + params[3])


def gru_bias(params):
    """The GRU projection's bias: b_ih, plus b_hh in the r and z gates' columns,
    which add like the input biases; b_hn stays apart, inside r * (.)
    (summed once for frozen ``params``)."""
    def make():
        b_ih, b_hh = params[2], params[3]
        H = b_ih.shape[0] // 3
        bias = b_ih.copy()
        bias[:2 * H] += b_hh[:2 * H]
        return bias
    return memo(params, "gru bias", make)


def forward_buffers(T, B, H, GH, steps, dtype, training, reverse):
    """``(n_slots, first, last, new)`` of a forward of fixed shapes, decided
    once rather than by every call (a frozen layer's planned calls run
    thousands of times, streaming steps among them).

    The state buffers are (n_slots, B, n): training keeps all T+1 states;
    inference alternates between two slots (one slot updated in place would
    defeat the compilers' runtime alias checks). ``first`` is the slot the
    first step reads (where the initial state goes), ``last`` the one the
    last step writes. ``new(shape, dtype)`` allocates the call's arrays:
    ``empty`` (the cache) when the largest of them, the gates (steps, B, GH),
    the states or y (T, B, H), may reach the cache's bound, else ``np.empty``
    itself."""
    n = T + 1 if training else 2
    nbytes = max(steps * GH, n * H, T * H) * B * dtype.itemsize
    new = np.empty if _pool is None or nbytes < POOLED_MIN_BYTES else empty
    return n, (T if reverse else 0) % n, (0 if reverse else T) % n, new


def final_state(slots, last, training):
    """The state the last step left, in slot ``last``: a copy when ``training``,
    whose workspace keeps ``slots`` for the backward (a caller changing h_n
    in place must not change what it reads); the slot itself in inference,
    where nothing else holds ``slots``."""
    return slots[last].copy() if training else slots[last]


def backward_outputs(cell, x, w_ih, w_hh, dstate_n):
    """Arrays a backward kernel fills: ``(dstate, dg, (dx, dw_ih, dw_hh, db_ih, db_hh))``.

    ``dstate``: the incoming state gradients (copies, zeros for None), which the
    kernels update in place into dh0 (and dc0); ``dg``: the (T, B, G*H) gradient
    of the pre-activations.
    """
    T, B, _ = x.shape
    GH, H = w_hh.shape
    dtype = x.dtype
    sizes = (H, GH // 4) if cell == "lstm" else (H,)     # h (P with a projection), c
    dstate = [np.zeros((B, n), dtype) if d is None else d.copy()
              for d, n in zip(dstate_n, sizes)]
    grads = (empty(x.shape, dtype), empty(w_ih.shape, dtype), empty(w_hh.shape, dtype),
             np.empty(GH, dtype), np.empty(GH, dtype))
    return dstate, empty((T, B, GH), dtype), grads
