"""Public kernel functions: one layer, one direction, time-major.

``*_forward`` runs a whole batch of sequences; with ``training=True`` it also
returns a :class:`Workspace` holding what ``*_backward`` needs. Arrays follow
PyTorch's layout and gate order (see :mod:`fastrnn.reference` for the math).
"""
from typing import NamedTuple, Optional

import numpy as np

from . import _backends
from . import _validate as v

N_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
STATE_NAMES = {"rnn_tanh": ("h",), "rnn_relu": ("h",), "lstm": ("h", "c"), "gru": ("h",)}


class Workspace:
    """What a training forward keeps for its backward. Pass it on unchanged.

    Attributes
    ----------
    cell : str
        ``"rnn_tanh"``, ``"rnn_relu"``, ``"lstm"`` or ``"gru"``.
    backend : str
        The backend that produced it; the backward runs on the same one.
    nbytes : int
        Memory of the arrays saved for the backward (gate activations and
        states), not counting the input and weights it refers to. Per step and
        batch row that is 6H values for an LSTM (gates 4H, h, c; with a
        projection, 5H + P + H: h has P values and the unprojected output H), 5H for a GRU (gates, W_hn h + b_hn, h) and H for a vanilla
        RNN (h): what the backward needs, nothing recomputed.
    proj_size : int or None
        P of an LSTM with a projection (``weight_hr``), else None.
    """
    __slots__ = ("cell", "backend", "dtype", "x_shape", "hidden_size", "has_bias", "data",
                 "proj_size")

    def __init__(self, cell, backend, dtype, x_shape, hidden_size, has_bias, data,
                 proj_size=None):
        self.cell = cell
        self.backend = backend
        self.dtype = dtype
        self.x_shape = x_shape
        self.hidden_size = hidden_size
        self.has_bias = has_bias
        self.data = data
        self.proj_size = proj_size

    @property
    def output_size(self):
        """Features of ``y`` and ``h``: P with a projection, else H."""
        return self.hidden_size if self.proj_size is None else self.proj_size

    @property
    def nbytes(self):
        return _nbytes(self.data)

    def __repr__(self):
        T, B, I = self.x_shape
        P = "" if self.proj_size is None else f" P={self.proj_size}"
        return (f"<fastrnn.Workspace {self.cell} {self.backend} {self.dtype} "
                f"T={T} B={B} I={I} H={self.hidden_size}{P} {self.nbytes} bytes>")


#: entries of the native backends' workspace dicts that are the caller's own
#: arrays (or, in a split batch, its rows of x), not memory saved for backward
_REFERENCED = ("x", "w_ih", "w_hh", "w_hr", "lengths")


def _nbytes(obj):
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_nbytes(o) for k, o in obj.items() if k not in _REFERENCED)
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(o) for o in obj)
    return 0


class RNNOutput(NamedTuple):
    """Result of :func:`rnn_forward` and :func:`gru_forward`."""
    y: np.ndarray                          #: (T, B, H)
    h_n: np.ndarray                        #: (B, H)
    workspace: Optional[Workspace]         #: None unless training


class LSTMOutput(NamedTuple):
    """Result of :func:`lstm_forward`. With a projection, y is (T, B, P) and h_n (B, P)."""
    y: np.ndarray                          #: (T, B, H)
    h_n: np.ndarray                        #: (B, H)
    c_n: np.ndarray                        #: (B, H)
    workspace: Optional[Workspace]         #: None unless training


class RNNGrads(NamedTuple):
    """Result of :func:`rnn_backward` and :func:`gru_backward`."""
    dx: np.ndarray                         #: (T, B, I)
    dh0: np.ndarray                        #: (B, H)
    dweight_ih: np.ndarray                 #: (G*H, I)
    dweight_hh: np.ndarray                 #: (G*H, H)
    dbias_ih: Optional[np.ndarray]         #: (G*H,), None without biases
    dbias_hh: Optional[np.ndarray]         #: (G*H,), None without biases


class LSTMGrads(NamedTuple):
    """Result of :func:`lstm_backward`."""
    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dweight_ih: np.ndarray
    dweight_hh: np.ndarray
    dbias_ih: Optional[np.ndarray]
    dbias_hh: Optional[np.ndarray]
    dweight_hr: Optional[np.ndarray] = None   #: (P, H), None without a projection


# ------------------------------------------------------------------ dispatch

def _forward(cell, x, states, weight_ih, weight_hh, bias_ih, bias_hh,
             lengths, reverse, training, backend, weight_hr=None):
    x = v.sequence_input(x)
    T, B, _ = x.shape
    H, params, has_bias = v.layer_params(N_GATES[cell], x, weight_ih, weight_hh,
                                         bias_ih, bias_hh, weight_hr)
    P = None if weight_hr is None else params[4].shape[0]
    state0 = tuple(_initial_state(name, s, B, H, P, x.dtype)
                   for name, s in zip(STATE_NAMES[cell], states))
    lengths = v.lengths_array(lengths, T, B)
    reverse = v.flag("reverse", reverse)
    training = v.flag("training", training)
    return _run(cell, x, state0, params, has_bias, H, P, lengths, reverse, training, backend)


def _run(cell, x, state0, params, has_bias, H, P, lengths, reverse, training, backend):
    """``_forward`` on arguments already checked: ``x`` (T, B, I) C-contiguous,
    ``state0`` C-contiguous (B, n) arrays, ``params`` as ``v.layer_params``
    returns them, ``lengths`` as ``v.lengths_array``. The layers call it
    directly with the parameters they checked once, not on every call."""
    T, B, _ = x.shape
    x = _without_nonfinite_padding(x, lengths)
    module = _backends.get(backend) if P is None else _projection_backend(backend)
    if T == 0 or B == 0:
        # nothing to compute; the reference handles empty arrays exactly
        module = _backends.get("reference")
    y, state_n, data = module.forward(cell, x, state0, params, lengths, reverse, training)
    if not training:
        return y, state_n, None
    reference = _backends.get("reference")
    if module is not reference and \
            _nonfinite_meets_padding(lengths, T, params, state0, state_n, reverse):
        module = reference
        y, state_n, data = module.forward(cell, x, state0, params, lengths, reverse, training)
    ws = Workspace(cell, _backends.name_of(module), x.dtype, x.shape, H, has_bias, data, P)
    return y, state_n, ws


def _state_size(name, H, P):
    """``(size, hint)`` of state ``name`` ("h" or "c"): with a projection (P not
    None) h has P features and c has H; ``hint`` explains it in error messages."""
    if P is None:
        return H, ""
    if name == "h":
        return P, f" = (B, P): with weight_hr, h has proj_size P = {P} features"
    return H, f" = (B, H): the cell state keeps hidden_size H = {H} features"


def _initial_state(name, value, B, H, P, dtype):
    size, hint = _state_size(name, H, P)
    return v.state(f"{name}0", value, B, size, dtype, hint)


def _final_state_gradient(name, value, B, H, P, dtype):
    size, hint = _state_size(name, H, P)
    return v.gradient(f"d{name}_n", value, (B, size), dtype, hint)


def _projection_backend(name):
    """The backend ``name`` for an LSTM with a projection.

    A backend declares support with a module attribute ``PROJECTION = True``; its
    ``params`` then have a fifth entry ``weight_hr`` and its ``dparams`` a fifth
    entry ``dweight_hr``. "auto" takes the fastest backend that supports it.
    """
    if name == "auto":
        name = next(n for n in _backends.available_backends()
                    if getattr(_backends.get(n), "PROJECTION", False))
    module = _backends.get(name)
    if not getattr(module, "PROJECTION", False):
        raise NotImplementedError(f"backend {name!r} does not support weight_hr (the LSTM "
                                  "projection, proj_size) yet; use backend='auto'")
    return module


def _without_nonfinite_padding(x, lengths):
    """``x``, or a copy with its padded steps zeroed if they hold NaN or Inf.

    Padding is never read by the recurrence, but the weight gradient is one GEMM
    over all T*B rows, where 0 * NaN would still be NaN. Arrays allocated with
    np.empty and filled only up to each length are common, so clean them once.
    """
    if lengths is None or x.size == 0:
        return x
    padded = np.arange(x.shape[0])[:, None] >= lengths[None, :]      # (T, B)
    if not padded.any() or np.isfinite(x[padded]).all():
        return x
    x = x.copy()
    x[padded] = 0
    return x


def _nonfinite_meets_padding(lengths, T, params, state0, state_n, reverse):
    """Would the native backward multiply a padded row's zero by a NaN or Inf?

    The native backward runs padded steps as zero rows of dG through the
    per-step product dh += dG @ W_hh and through the GEMMs after the loop
    (dx = dG @ W_ih, dW_hh = dG^T @ h_in): exact for finite values, but
    0 * Inf = NaN would then reach the gradient of a padded row (a length-0
    sequence's dh0, the dh entering a sequence's last step) or dW_hh. That
    happens only with a non-finite W_ih or W_hh, or a non-finite state carried
    through the padding: h0 and c0 going in reverse, the final state forward.
    Such a training call is run by the reference instead, which skips padded
    steps as a PackedSequence does (slow, but only for a diverged model or NaN data).
    """
    if lengths is None:
        return False
    padded = lengths < T
    if not padded.any():
        return False
    if not (np.isfinite(params[0]).all() and np.isfinite(params[1]).all()):
        return True
    carried = state0 if reverse else state_n
    return not all(np.isfinite(s[padded]).all() for s in carried)


def _backward(cell, ws, dy, dstate_n):
    if not isinstance(ws, Workspace):
        raise TypeError("workspace must be the Workspace returned by a forward with "
                        f"training=True, got {type(ws).__name__}")
    expected = cell if cell != "rnn" else ("rnn_tanh", "rnn_relu")
    if ws.cell not in (expected if isinstance(expected, tuple) else (expected,)):
        raise TypeError(f"workspace comes from a {ws.cell} forward, not a {cell} one")
    T, B, _ = ws.x_shape
    H, P = ws.hidden_size, ws.proj_size
    dy = v.gradient("dy", dy, (T, B, ws.output_size), ws.dtype,
                    "" if P is None else " = (T, B, P), like y")
    dstate_n = tuple(_final_state_gradient(name, d, B, H, P, ws.dtype)
                     for name, d in zip(STATE_NAMES[ws.cell], dstate_n))
    module = _backends.get(ws.backend)
    dx, dstate0, dparams = module.backward(ws.cell, ws.data, dy, dstate_n)
    dparams = tuple(dparams)
    if not ws.has_bias:
        dparams = dparams[:2] + (None, None) + dparams[4:]
    return (dx,) + tuple(dstate0) + dparams


# ------------------------------------------------------------------ public API

_PARAMS_DOC = """
    x : (T, B, I) float32 or float64 array
        Time-major input. Every other array must have the same dtype.
    {states}
    weight_ih : (G*H, I) array
    weight_hh : (G*H, H) array
    bias_ih, bias_hh : (G*H,) arrays or None
        Both or neither (None is PyTorch's ``bias=False``).
    lengths : (B,) int array, optional
        Valid steps per sequence, ``0 <= lengths[b] <= T``, any order.
        Packed-sequence semantics: outputs past the length are zero, the
        final state is the state after the last valid step, and with
        ``reverse=True`` each sequence starts at its own last valid step.
    reverse : bool
        Run from ``t = T-1`` down to ``0`` (the second direction of a
        bidirectional layer).
    training : bool
        Keep a :class:`Workspace` for the backward pass.
    backend : str
        ``"auto"`` (the fastest available), ``"cython"``, ``"numba"`` or
        ``"reference"``; see :func:`fastrnn.available_backends`.
"""


def rnn_forward(x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *,
                nonlinearity="tanh", lengths=None, reverse=False, training=False,
                backend="auto"):
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    y, (h_n,), ws = _forward(f"rnn_{nonlinearity}", x, (h0,), weight_ih, weight_hh,
                             bias_ih, bias_hh, lengths, reverse, training, backend)
    return RNNOutput(y, h_n, ws)


def lstm_forward(x, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *,
                 weight_hr=None, lengths=None, reverse=False, training=False,
                 backend="auto"):
    y, (h_n, c_n), ws = _forward("lstm", x, (h0, c0), weight_ih, weight_hh,
                                 bias_ih, bias_hh, lengths, reverse, training, backend,
                                 weight_hr)
    return LSTMOutput(y, h_n, c_n, ws)


def gru_forward(x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *,
                lengths=None, reverse=False, training=False, backend="auto"):
    y, (h_n,), ws = _forward("gru", x, (h0,), weight_ih, weight_hh,
                             bias_ih, bias_hh, lengths, reverse, training, backend)
    return RNNOutput(y, h_n, ws)


def rnn_backward(workspace, dy=None, dh_n=None):
    """Gradients of a vanilla RNN forward; returns :class:`RNNGrads`.

    Parameters
    ----------
    workspace : Workspace
        From ``rnn_forward(..., training=True)``.
    dy : (T, B, H) array or None
        Gradient with respect to ``y`` (None: zero).
    dh_n : (B, H) array or None
        Gradient with respect to ``h_n`` (None: zero).
    """
    return RNNGrads(*_backward("rnn", workspace, dy, (dh_n,)))


def lstm_backward(workspace, dy=None, dh_n=None, dc_n=None):
    """Gradients of an LSTM forward; returns :class:`LSTMGrads`.

    Parameters
    ----------
    workspace : Workspace
        From ``lstm_forward(..., training=True)``.
    dy : (T, B, H) array or None
        (T, B, P) with a projection.
    dh_n, dc_n : (B, H) arrays or None
        dh_n is (B, P) with a projection.

    ``dweight_hr`` (P, H) is None unless the forward had ``weight_hr``.
    """
    return LSTMGrads(*_backward("lstm", workspace, dy, (dh_n, dc_n)))


def gru_backward(workspace, dy=None, dh_n=None):
    """Gradients of a GRU forward; returns :class:`RNNGrads`.

    Parameters
    ----------
    workspace : Workspace
        From ``gru_forward(..., training=True)``.
    dy : (T, B, H) array or None
    dh_n : (B, H) array or None
    """
    return RNNGrads(*_backward("gru", workspace, dy, (dh_n,)))


rnn_forward.__doc__ = """Vanilla RNN over a batch: h' = act(W_ih x + b_ih + W_hh h + b_hh).

    Parameters
    ----------""" + _PARAMS_DOC.format(states="""h0 : (B, H) array or None
        Initial hidden state (None: zeros).""") + """    nonlinearity : {'tanh', 'relu'}

    Returns
    -------
    RNNOutput
        ``(y (T, B, H), h_n (B, H), workspace)``; G = 1.
    """
lstm_forward.__doc__ = """LSTM over a batch (gate order i, f, g, o, as PyTorch).

    With ``weight_hr`` (PyTorch's ``proj_size``): h' = (o * tanh(c')) @ weight_hr.T.

    Parameters
    ----------""" + _PARAMS_DOC.format(states="""h0, c0 : (B, H) arrays or None
        Initial hidden and cell states (None: zeros). With ``weight_hr``, h0 is (B, P).""") + """\
    weight_hr : (P, H) array or None, keyword-only
        The projection of PyTorch's ``proj_size=P``, 0 < P < H
        (``weight_hr_l0``). Then ``weight_hh`` is (4*H, P), and ``y``, ``h0``,
        ``h_n`` have P features; c keeps H.

    Returns
    -------
    LSTMOutput
        ``(y (T, B, H), h_n (B, H), c_n (B, H), workspace)``; G = 4. With a
        projection, y is (T, B, P) and h_n (B, P).
    """
gru_forward.__doc__ = """GRU over a batch (gate order r, z, n; reset applied after W_hn h).

    Parameters
    ----------""" + _PARAMS_DOC.format(states="""h0 : (B, H) array or None
        Initial hidden state (None: zeros).""") + """
    Returns
    -------
    RNNOutput
        ``(y (T, B, H), h_n (B, H), workspace)``; G = 3.
    """
