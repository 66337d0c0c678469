"""The Cython kernels behind the backend interface (see ``_backends``).

Python owns all memory: this module allocates outputs, the workspace and the
scratch, transposes the weights once per call into the layout the per-step GEMM
reads fastest ((K, G*H), K-major), and hands everything to ``fastrnn._ext``,
whose kernels allocate nothing and run without the GIL.

Buffers (T steps, B sequences, H hidden units, G gates)
------------------------------------------------------
``hs``, ``cs`` : (T+1, B, H) in training, the state entering and leaving each
    step (time-aligned slots, see ``src_ext/_rnn_common.pxd``); (1, B, H) in
    inference, overwritten in place.
``gates`` : (T, B, G*H) activated gates in training (LSTM, GRU); in inference,
    and for the RNN always, (chunk, B, G*H) scratch for the input projection of
    ``chunk`` steps at a time, so inference memory does not grow with T.
``ghn`` : (T, B, H) GRU only, W_hn h + b_hn, needed for the reset gate's gradient.

LSTM with a projection (``params`` has a fifth entry ``w_hr`` (P, H)): ``hs``
and ``y`` have P features, ``cs`` keeps H, and ``m`` holds o * tanh(c), the
input of the projection: (T, B, H) in training (for dW_hr), (1, B, H) scratch
in inference. Backward adds ``dh_total`` (T, B, P), the gradient reaching each
h_t, so that dW_hr is one GEMM over all T*B rows, and ``dm`` (B, H) scratch.
"""
import numpy as np

from ._ext import gru as _gru
from ._ext import lstm as _lstm
from ._ext import rnn as _rnn

#: handles ``params = (w_ih, w_hh, b_ih, b_hh, w_hr)``: an LSTM with a projection
PROJECTION = True

#: rows (steps * batch) per input-projection GEMM in inference
CHUNK_ROWS = 256


def _chunk(T, B):
    return max(1, min(T, CHUNK_ROWS // B))


def _state_slots(T, B, H, dtype, training, reverse, initial):
    """State buffer with ``initial`` in the slot the first step reads."""
    slots = np.empty((T + 1 if training else 1, B, H), dtype)
    slots[T if (training and reverse) else 0] = initial
    return slots


def _final(slots, reverse):
    """Copy of the state the last step left (slot 0 going in reverse)."""
    return slots[0 if reverse or slots.shape[0] == 1 else -1].copy()


def forward(cell, x, state0, params, lengths, reverse, training):
    w_ih, w_hh, b_ih, b_hh = params[:4]
    w_hr = params[4] if len(params) > 4 else None
    T, B, _ = x.shape
    H = w_hh.shape[1]               # the size of h: P with a projection
    GH = w_hh.shape[0]
    dtype = x.dtype
    w_ih_t = np.ascontiguousarray(w_ih.T)
    w_hh_t = np.ascontiguousarray(w_hh.T)
    hs = _state_slots(T, B, H, dtype, training, reverse, state0[0])
    y = np.empty((T, B, H), dtype)
    keep_gates = training and cell in ("lstm", "gru")
    gates = np.empty((T if keep_gates else _chunk(T, B), B, GH), dtype)
    data = None
    if cell == "lstm":
        HC = GH // 4                # the size of c
        cs = _state_slots(T, B, HC, dtype, training, reverse, state0[1])
        proj = {}
        if w_hr is not None:
            proj = dict(w_hr_t=np.ascontiguousarray(w_hr.T),
                        m=np.empty((T if training else 1, B, HC), dtype))
        _lstm.forward(x, w_ih_t, w_hh_t, b_ih + b_hh, lengths, reverse, gates, hs, cs, y,
                      **proj)
        state_n = (_final(hs, reverse), _final(cs, reverse))
        if training:
            data = dict(gates=gates, hs=hs, cs=cs)
            if w_hr is not None:
                data.update(w_hr=w_hr, m=proj["m"])
    elif cell == "gru":
        # b_hr and b_hz add like the input biases; b_hn sits inside r * (.)
        bias = b_ih.copy()
        bias[:2 * H] += b_hh[:2 * H]
        ghn = np.empty((T, B, H), dtype) if training else None
        gh = np.empty((B, GH), dtype)
        _gru.forward(x, w_ih_t, w_hh_t, bias, b_hh[2 * H:], lengths, reverse,
                     gates, gh, ghn, hs, y)
        state_n = (_final(hs, reverse),)
        if training:
            data = dict(gates=gates, ghn=ghn, hs=hs)
    else:
        _rnn.forward(x, w_ih_t, w_hh_t, b_ih + b_hh, lengths, reverse,
                     cell == "rnn_relu", gates, hs, y)
        state_n = (_final(hs, reverse),)
        if training:
            data = dict(hs=hs)
    if training:
        data.update(x=x, w_ih=w_ih, w_hh=w_hh, lengths=lengths, reverse=reverse)
    return y, state_n, data


def backward(cell, data, dy, dstate_n):
    x, w_ih, w_hh = data["x"], data["w_ih"], data["w_hh"]
    lengths, reverse = data["lengths"], data["reverse"]
    T, B, _ = x.shape
    GH, H = w_hh.shape
    dtype = x.dtype
    # the kernels update the state gradients in place: give them their own copies
    sizes = (H, GH // 4) if cell == "lstm" else (H,)     # h (P with a projection), c
    dstate = [np.zeros((B, n), dtype) if d is None else d.copy()
              for d, n in zip(dstate_n, sizes)]
    dx = np.empty_like(x)
    dw_ih = np.empty_like(w_ih)
    dw_hh = np.empty_like(w_hh)
    db_ih = np.empty(GH, dtype)
    db_hh = np.empty(GH, dtype)
    dg = np.empty((T, B, GH), dtype)
    grads = (dx, dw_ih, dw_hh, db_ih, db_hh)
    if cell == "lstm" and "w_hr" in data:
        w_hr = data["w_hr"]
        dw_hr = np.empty_like(w_hr)
        _lstm.backward(x, w_ih, w_hh, data["gates"], data["hs"], data["cs"], dy,
                       lengths, reverse, dstate[0], dstate[1], dg, *grads,
                       w_hr=w_hr, m=data["m"], dh_total=np.empty((T, B, H), dtype),
                       dm=np.empty((B, GH // 4), dtype), dw_hr=dw_hr)
        return dx, tuple(dstate), (dw_ih, dw_hh, db_ih, db_hh, dw_hr)
    if cell == "lstm":
        _lstm.backward(x, w_ih, w_hh, data["gates"], data["hs"], data["cs"], dy,
                       lengths, reverse, dstate[0], dstate[1], dg, *grads)
    elif cell == "gru":
        dg_h = np.empty((T, B, GH), dtype)
        _gru.backward(x, w_ih, w_hh, data["gates"], data["ghn"], data["hs"], dy,
                      lengths, reverse, dstate[0], dg, dg_h, *grads)
    else:
        _rnn.backward(x, w_ih, w_hh, data["hs"], dy, lengths, reverse,
                      cell == "rnn_relu", dstate[0], dg, *grads)
    return dx, tuple(dstate), (dw_ih, dw_hh, db_ih, db_hh)
