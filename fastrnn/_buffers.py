"""Buffers shared by the native backends (Cython and Numba).

Both backends lay out their outputs, workspace and scratch the same way (see
``fastrnn._cython_backend``); the allocation lives here once.
"""
import numpy as np

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
