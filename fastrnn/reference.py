"""Plain NumPy reference for the RNN, LSTM and GRU layers and their BPTT.

This module is the ground truth the native kernels are tested against and the
documentation of the math. It is written to be read, not to be fast: one step
function per cell, one backward step per cell, and a generic loop over time.

Conventions (PyTorch's, exactly)
--------------------------------
- ``x`` is time-major ``(T, B, I)``; states are ``(B, H)``.
- ``weight_ih`` is ``(G*H, I)``, ``weight_hh`` is ``(G*H, H)``, ``bias_ih`` and
  ``bias_hh`` are ``(G*H,)``; gate blocks are stacked along the first axis.
- RNN  (G=1): h' = act(W_ih x + b_ih + W_hh h + b_hh), act in {tanh, relu}.
- LSTM (G=4, order i, f, g, o):
  i, f, o = sigmoid(.), g = tanh(.), c' = f*c + i*g, h' = o*tanh(c').
  With a projection (PyTorch's ``proj_size`` P, 0 < P < H) the parameters gain
  ``weight_hr`` (P, H): m = o*tanh(c'), h' = m @ weight_hr.T. Then h, the
  output and ``weight_hh``'s second axis have P features (``weight_hh`` is
  (4H, P)); c keeps H.
- GRU  (G=3, order r, z, n; the reset gate is applied after the recurrent
  product, as in PyTorch/cuDNN and ONNX ``linear_before_reset=1``):
  r, z = sigmoid(.), n = tanh(W_in x + b_in + r*(W_hn h + b_hn)),
  h' = (1-z)*n + z*h.

Variable lengths (packed-sequence semantics without packing)
-------------------------------------------------------------
Sequence ``b`` is valid for ``t < lengths[b]``. At a padded step the state is
carried unchanged and the output is zero, so the forward direction ends with
the state after step ``lengths[b]-1`` and the reverse direction (which visits
``t = T-1 .. 0``) starts from ``h0`` at each sequence's own last valid step.
Padding receives zero gradient.

The functions here take already-validated arrays (see ``fastrnn._validate``);
the public entry points are in ``fastrnn.kernels``.
"""
import numpy as np


# ----------------------------------------------------------------- activations

def sigmoid(a):
    # exp of a non-positive number only, so it never overflows
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(a.dtype, copy=False)


def relu(a):
    return np.maximum(a, 0)


# ------------------------------------------------------------------------ cells
# Each step returns the new state and a cache of what its backward step needs.
# Parameters are a tuple (weight_ih, weight_hh, bias_ih, bias_hh).

def rnn_step(x, state, params, nonlinearity="tanh"):
    """One vanilla RNN step. x : (B, I); state = (h,), h : (B, H)."""
    (h,) = state
    w_ih, w_hh, b_ih, b_hh = params
    pre = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    h_new = np.tanh(pre) if nonlinearity == "tanh" else relu(pre)
    return (h_new,), (x, h, h_new)


def rnn_step_backward(dstate, cache, params, nonlinearity="tanh"):
    """Gradients of one RNN step. dstate = (dh',). Returns dx, (dh,), dparams."""
    (dh_new,) = dstate
    x, h, h_new = cache
    w_ih, w_hh, _, _ = params
    if nonlinearity == "tanh":
        dpre = dh_new * (1 - h_new * h_new)       # backprop through tanh
    else:
        dpre = np.where(h_new > 0, dh_new, 0)     # backprop through relu (a select, as
                                                  # PyTorch's: an Inf dh stays out where h <= 0)
    dx = dpre @ w_ih
    dh = dpre @ w_hh
    return dx, (dh,), (dpre.T @ x, dpre.T @ h, dpre.sum(0), dpre.sum(0))


def lstm_step(x, state, params):
    """One LSTM step. x : (B, I); state = (h, c), h : (B, P), c : (B, H).

    ``params`` is ``(w_ih, w_hh, b_ih, b_hh)``, or with a projection
    ``(w_ih, w_hh, b_ih, b_hh, w_hr)``; without one P = H.
    """
    h, c = state
    w_ih, w_hh, b_ih, b_hh = params[:4]
    w_hr = params[4] if len(params) > 4 else None
    gates = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f, g, o = np.split(gates, 4, axis=1)
    i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
    c_new = f * c + i * g
    tanh_c = np.tanh(c_new)
    m = o * tanh_c
    h_new = m if w_hr is None else m @ w_hr.T        # the projection
    return (h_new, c_new), (x, h, c, i, f, g, o, tanh_c)


def lstm_step_backward(dstate, cache, params):
    """Gradients of one LSTM step. dstate = (dh', dc'). Returns dx, (dh, dc), dparams."""
    dh_new, dc_new = dstate
    x, h, c, i, f, g, o, tanh_c = cache
    w_ih, w_hh = params[:2]
    w_hr = params[4] if len(params) > 4 else None
    if w_hr is None:
        dm = dh_new
    else:                                            # h' = m @ w_hr.T
        dm = dh_new @ w_hr
        dw_hr = dh_new.T @ (o * tanh_c)
    do = dm * tanh_c                                 # m = o * tanh(c')
    dc_new = dc_new + dm * o * (1 - tanh_c * tanh_c)
    di = dc_new * g                                  # c' = f*c + i*g
    df = dc_new * c
    dg = dc_new * i
    dc = dc_new * f
    dgates = np.concatenate([
        di * i * (1 - i),                            # backprop through sigmoid
        df * f * (1 - f),
        dg * (1 - g * g),                            # backprop through tanh
        do * o * (1 - o),
    ], axis=1)
    dx = dgates @ w_ih
    dh = dgates @ w_hh
    dparams = (dgates.T @ x, dgates.T @ h, dgates.sum(0), dgates.sum(0))
    if w_hr is not None:
        dparams += (dw_hr,)
    return dx, (dh, dc), dparams


def gru_step(x, state, params):
    """One GRU step (reset after the recurrent product). x : (B, I); state = (h,)."""
    (h,) = state
    w_ih, w_hh, b_ih, b_hh = params
    gi_r, gi_z, gi_n = np.split(x @ w_ih.T + b_ih, 3, axis=1)
    gh_r, gh_z, gh_n = np.split(h @ w_hh.T + b_hh, 3, axis=1)
    r = sigmoid(gi_r + gh_r)
    z = sigmoid(gi_z + gh_z)
    n = np.tanh(gi_n + r * gh_n)
    h_new = (1 - z) * n + z * h
    return (h_new,), (x, h, r, z, n, gh_n)


def gru_step_backward(dstate, cache, params):
    """Gradients of one GRU step. dstate = (dh',). Returns dx, (dh,), dparams."""
    (dh_new,) = dstate
    x, h, r, z, n, gh_n = cache
    w_ih, w_hh, _, _ = params
    dn = dh_new * (1 - z)                            # h' = (1-z)*n + z*h
    dz = dh_new * (h - n)
    dn_pre = dn * (1 - n * n)                        # backprop through tanh
    dr = dn_pre * gh_n                               # n = tanh(gi_n + r*gh_n)
    dr_pre = dr * r * (1 - r)                        # backprop through sigmoid
    dz_pre = dz * z * (1 - z)
    dgi = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
    dgh = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1)
    dx = dgi @ w_ih
    dh = dh_new * z + dgh @ w_hh
    return dx, (dh,), (dgi.T @ x, dgh.T @ h, dgi.sum(0), dgh.sum(0))


CELLS = {
    "rnn_tanh": (lambda x, s, p: rnn_step(x, s, p, "tanh"),
                 lambda d, c, p: rnn_step_backward(d, c, p, "tanh")),
    "rnn_relu": (lambda x, s, p: rnn_step(x, s, p, "relu"),
                 lambda d, c, p: rnn_step_backward(d, c, p, "relu")),
    "lstm": (lstm_step, lstm_step_backward),
    "gru": (gru_step, gru_step_backward),
}


# ------------------------------------------------------------- time and BPTT

def time_order(T, reverse):
    """The order in which a direction visits the time steps."""
    return range(T - 1, -1, -1) if reverse else range(T)


def valid_mask(lengths, t, B):
    """(B, 1) bool: which sequences have a real (not padded) step at time t."""
    if lengths is None:
        return np.ones((B, 1), dtype=bool)
    return (t < lengths)[:, None]


def forward(cell, x, state0, params, lengths=None, reverse=False):
    """Run ``cell`` over a batch of sequences.

    Parameters
    ----------
    cell : str
        One of ``CELLS``.
    x : (T, B, I) array
    state0 : tuple of (B, H) arrays
        ``(h0,)``, or ``(h0, c0)`` for the LSTM (with a projection h0 is (B, P)).
    params : tuple
        ``(weight_ih, weight_hh, bias_ih, bias_hh)``, plus ``weight_hr`` for an
        LSTM with a projection.
    lengths : (B,) int array or None
    reverse : bool
        Visit the steps from ``T-1`` down to ``0``.

    Returns
    -------
    y : (T, B, H) array ((T, B, P) with a projection)
        The hidden state after each step; zero at padded steps.
    state_n : tuple of (B, H) arrays
        The final states.
    tape : list
        Per visited step: ``(t, mask, cache)``, what ``backward`` needs.
    """
    step, _ = CELLS[cell]
    T, B, _ = x.shape
    H = state0[0].shape[1]
    y = np.zeros((T, B, H), dtype=x.dtype)
    state = state0
    tape = []
    for t in time_order(T, reverse):
        mask = valid_mask(lengths, t, B)
        new_state, cache = step(x[t], state, params)
        state = tuple(np.where(mask, new, old) for new, old in zip(new_state, state))
        y[t] = np.where(mask, new_state[0], 0)
        tape.append((t, mask, cache))
    return y, tuple(s.copy() for s in state), tape


def backward(cell, tape, params, x_shape, dy, dstate_n):
    """Backpropagation through time for the tape of ``forward``.

    Parameters
    ----------
    dy : array shaped like ``y``
        Gradient of the loss with respect to ``y``.
    dstate_n : tuple of arrays shaped like the states
        Gradient with respect to the final states.

    Returns
    -------
    dx : (T, B, I) array
    dstate0 : tuple of arrays shaped like the states
    dparams : tuple ``(dweight_ih, dweight_hh, dbias_ih, dbias_hh)``, plus
        ``dweight_hr`` with a projection
    """
    _, step_backward = CELLS[cell]
    dx = np.zeros(x_shape, dtype=dy.dtype)
    dparams = [np.zeros_like(p) for p in params]
    dstate = dstate_n
    for t, mask, cache in reversed(tape):
        valid = mask[:, 0]
        # y[t] carries the new hidden state only where the step is valid
        d_new = (dstate[0] + np.where(mask, dy[t], 0),) + dstate[1:]
        # only the valid rows backpropagate through step t: a padded step was
        # not taken (as in a PackedSequence), so its cache, which may hold a
        # NaN or Inf carried through the padding, never reaches a gradient
        dx_t, dstate_prev, dparams_t = step_backward(
            tuple(d[valid] for d in d_new), tuple(c[valid] for c in cache), params)
        dx[t, valid] = dx_t
        for acc, d in zip(dparams, dparams_t):
            acc += d
        # a padded step passed its state through unchanged
        dstate = tuple(_scatter(d, valid, dp) for dp, d in zip(dstate_prev, d_new))
    return dx, tuple(d.copy() for d in dstate), tuple(dparams)


def _scatter(a, rows, values):
    """A copy of ``a`` with ``a[rows] = values``."""
    a = a.copy()
    a[rows] = values
    return a
