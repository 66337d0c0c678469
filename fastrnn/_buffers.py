"""Buffers shared by the native backends (Cython and Numba).

Both backends lay out their outputs, workspace and scratch the same way (see
``fastrnn._cython_backend``); the allocation lives here once.
"""
import numpy as np

#: rows (steps * batch) per input-projection GEMM in inference: at least
#: CHUNK_ROWS, and up to CHUNK_ROWS_MAX for wide projections (see ``chunk``)
CHUNK_ROWS = 256
CHUNK_ROWS_MAX = 1024


def chunk(T, B, GH):
    """Steps whose inputs one inference GEMM projects: memory stays O(B), not O(T).

    Each GEMM repacks W_ih (GH, I), a sizeable share of the GEMM itself
    unless the rows number at least about half the GH columns. Against 256
    rows always (one process, interleaved, 15 rounds, median of the per-round
    ratios, two runs): LSTM large inference (GH = 2048, 1024 rows) 1.05-1.06x
    faster, GRU large (GH = 1536, 768 rows) 1.06-1.08x, medium 0.98-1.02x;
    other grid shapes chunk as before. The scratch is rows x GH values: at
    most CHUNK_ROWS_MAX x GH, 8 MiB for an LSTM with H = 512.
    """
    rows = min(max(CHUNK_ROWS, GH // 2), CHUNK_ROWS_MAX)
    return max(1, min(T, rows // B))


def prepared_w_hh(dtype, T, B, w_hh, trans, pack, packed_max_b, prepare_min_t):
    """How a backend's kernels multiply by op(W_hh) each step, prepared once.

    The rule both native backends follow: nothing for calls of fewer than
    ``prepare_min_t`` steps (preparing costs about one step's product);
    ``packed`` panels, from the backend's own ``pack(w_hh, trans, K, N)``,
    for float32 batches of up to ``packed_max_b`` rows; else, for the
    forward's op(W_hh) = W_hh^T (``trans``), a K-major copy ``w_hh_t``, which
    OpenBLAS multiplies faster than through its transpose flag. op(W_hh) is
    (K, N): (H, G*H) forward, (G*H, H) backward.
    """
    if T < prepare_min_t:
        return {}
    K, N = (w_hh.shape[1], w_hh.shape[0]) if trans else w_hh.shape
    if dtype == np.float32 and B <= packed_max_b:
        return dict(packed=pack(w_hh, trans, K, N))
    if trans:
        return dict(w_hh_t=np.ascontiguousarray(w_hh.T))
    return {}


def state_slots(T, B, H, dtype, training, reverse, initial):
    """State buffer with ``initial`` in the slot the first step reads.

    Training keeps all T+1 states; inference alternates between two slots (one
    slot updated in place would defeat the compilers' runtime alias checks).
    """
    slots = np.empty((T + 1 if training else 2, B, H), dtype)
    slots[(T if reverse else 0) % slots.shape[0]] = initial
    return slots


def final_state(slots, T, reverse):
    """Copy of the state the last step left (slot 0 going in reverse)."""
    return slots[(0 if reverse else T) % slots.shape[0]].copy()


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
    grads = (np.empty_like(x), np.empty_like(w_ih), np.empty_like(w_hh),
             np.empty(GH, dtype), np.empty(GH, dtype))
    return dstate, np.empty((T, B, GH), dtype), grads
