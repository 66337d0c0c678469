"""Multi-layer, bidirectional RNN, LSTM and GRU layers with PyTorch's API, in NumPy.

``fastrnn.RNN``, ``fastrnn.LSTM`` and ``fastrnn.GRU`` take the constructor
arguments of ``torch.nn.RNN``/``LSTM``/``GRU``, name their parameters as PyTorch
does (``weight_ih_l0``, ``bias_hh_l1_reverse``, ``weight_hr_l0``, ...) and return
the same shapes. All arithmetic happens in the kernel functions of
:mod:`fastrnn.kernels` (one call per layer and direction); this module only
arranges layers, directions, layouts and dropout around them.

Inference::

    lstm = fastrnn.LSTM(10, 20, num_layers=2, bidirectional=True, batch_first=True)
    y, (h_n, c_n) = lstm(x)                       # x (B, T, 10) -> y (B, T, 40)
    y, (h_n, c_n) = lstm(x, (h0, c0), lengths)    # packed-sequence results

Training (nothing is stored on the layer: the context carries the state)::

    y, (h_n, c_n), ctx = lstm(x, training=True)
    grads = lstm.backward(ctx, dy, (dh_n, dc_n))  # any gradient may be None
    grads.dx, grads.dhx, grads.dparams["weight_ih_l0"]

Streaming: ``y_t, state = lstm.step(x_t, state)`` (or ``lstm(x[t:t+1], state)``)
gives the results of the whole sequence.

Differences from PyTorch: ``lengths`` (per-sequence valid steps, any order,
zero allowed) replaces ``PackedSequence``; dropout between layers is applied
only in a forward with ``training=True`` (there is no train/eval mode).
Update parameters only after the backward of a training forward: its
workspaces may refer to the parameter arrays.
"""
import math
import warnings
from typing import NamedTuple

import numpy as np

from . import _backends, _parallel
from . import _validate as v
from . import kernels
from .frozen import Frozen

__all__ = ["RNN", "LSTM", "GRU", "Context", "LayerGrads"]


class _Cell(NamedTuple):
    """What differs between the cells: data, not code."""
    n_gates: int
    state_names: tuple           # ("h",) or ("h", "c")
    backward: object             # kernels.*_backward


# the forward goes through kernels._run, which takes the mode ("rnn_tanh", ...) itself
_CELLS = {
    "rnn_tanh": _Cell(1, ("h",), kernels.rnn_backward),
    "rnn_relu": _Cell(1, ("h",), kernels.rnn_backward),
    "lstm": _Cell(4, ("h", "c"), kernels.lstm_backward),
    "gru": _Cell(3, ("h",), kernels.gru_backward),
}


class Context:
    """What a training forward of a layer keeps for its backward. Pass it on unchanged.

    One context per forward call: a layer can run several training forwards
    (in several threads) and backpropagate them in any order.

    Attributes
    ----------
    workspaces : list of fastrnn.Workspace
        One per layer and direction, indexed ``layer * num_directions + direction``.
    dropout_masks : list of arrays
        The scaled masks (0 or ``1/(1-p)``) multiplied into the output of each
        layer but the last, time-major ``(T, B, D*Hout)``; empty without dropout.
    """
    __slots__ = ("layer", "workspaces", "dropout_masks", "T", "B", "unbatched",
                 "batch_first", "dtype")

    def __init__(self, layer, workspaces, dropout_masks, T, B, unbatched, batch_first, dtype):
        self.layer = layer
        self.workspaces = workspaces
        self.dropout_masks = dropout_masks
        self.T = T
        self.B = B
        self.unbatched = unbatched
        self.batch_first = batch_first
        self.dtype = dtype

    @property
    def nbytes(self):
        """Memory held by the workspaces and masks."""
        return (sum(ws.nbytes for ws in self.workspaces)
                + sum(m.nbytes for m in self.dropout_masks))

    def __repr__(self):
        return (f"<fastrnn.layers.Context of {type(self.layer).__name__} T={self.T} "
                f"B={self.B} {self.nbytes} bytes>")


class LayerGrads(NamedTuple):
    """Result of a layer's ``backward``."""
    dx: np.ndarray                 #: same shape as the x of the forward
    dhx: object                    #: like hx: dh_0, or (dh_0, dc_0) for the LSTM
    dparams: dict                  #: parameter name -> gradient, in parameter order


def _dtype_of(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be np.float32 or np.float64, got {dtype!r}") from None
    if dt not in v.FLOAT_DTYPES:
        raise TypeError(f"dtype must be np.float32 or np.float64, got {dt}")
    return dt


def _positive_int(name, value, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


#: options that shape the parameters: set once, by the constructor
_FIXED = frozenset({"mode", "input_size", "hidden_size", "num_layers", "bias", "bidirectional",
                    "proj_size", "dtype"})


class _RNNBase:
    """A stack of recurrent layers, optionally bidirectional (see the module docstring).

    The subclasses only fix the cell: ``RNN`` (tanh or relu), ``LSTM``, ``GRU``.
    """
    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, *,
                 dtype=np.float32, backend="auto", rng=None):
        self._params = {}              # set first: __getattr__ looks here
        self._params_cache = {}
        self.mode = mode
        self._cell = _CELLS[mode]
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        self.bias = v.flag("bias", bias)
        self.batch_first = batch_first
        self.bidirectional = v.flag("bidirectional", bidirectional)
        self.dropout = dropout
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout is applied between stacked layers (after every layer but "
                          f"the last), so dropout={dropout} with num_layers=1 has no effect",
                          stacklevel=3)
        self.proj_size = _positive_int("proj_size", proj_size, minimum=0)
        if self.proj_size and mode != "lstm":
            raise ValueError(f"proj_size must be 0 for {type(self).__name__} (only the LSTM has "
                             f"a projection), got {self.proj_size}")
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size ({self.hidden_size}), "
                             f"got {self.proj_size}")
        self.dtype = _dtype_of(dtype)
        self.backend = backend
        self._rng = np.random.default_rng(rng)

        # per (layer, direction): {kind: parameter name}, kinds in PyTorch's order
        kinds = ["weight_ih", "weight_hh"]
        kinds += ["bias_ih", "bias_hh"] if self.bias else []
        kinds += ["weight_hr"] if self.proj_size else []
        G, H, P = self._cell.n_gates, self.hidden_size, self.output_size
        self._state_sizes = tuple(self._state_size(s) for s in self._cell.state_names)
        self._names = []
        for k in range(self.num_layers):
            layer_input = self.input_size if k == 0 else P * self.num_directions
            shapes = {"weight_ih": (G * H, layer_input), "weight_hh": (G * H, P),
                      "bias_ih": (G * H,), "bias_hh": (G * H,), "weight_hr": (P, H)}
            for d in range(self.num_directions):
                suffix = f"_l{k}" + ("_reverse" if d else "")
                names = {kind: kind + suffix for kind in kinds}
                self._names.append(names)
                for kind, name in names.items():
                    self._params[name] = np.empty(shapes[kind], self.dtype)
        self.reset_parameters()

    # ------------------------------------------------------------ properties

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def output_size(self):
        """Features of h (per direction): ``proj_size`` if set, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    @property
    def nonlinearity(self):
        return self.mode[len("rnn_"):] if self.mode.startswith("rnn_") else None

    def _state_size(self, name):
        return self.output_size if name == "h" else self.hidden_size

    # ------------------------------------------------------------ parameters

    def __getattr__(self, name):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            params[name] = self._checked_param(name, value)
            self._params_cache.clear()
            return
        if name in _FIXED and name in self.__dict__:
            raise AttributeError(f"{name} is fixed when the layer is built (it shapes the "
                                 "parameters); build a new layer instead")
        if name == "dropout":
            number = isinstance(value, (int, float, np.number)) and \
                not isinstance(value, (bool, np.bool_))
            if not number or not 0 <= value <= 1:
                raise ValueError("dropout must be a number in [0, 1], the probability of an "
                                 f"element being zeroed; got {value!r}")
            value = float(value)
        elif name == "batch_first":
            value = v.flag("batch_first", value)
        elif name == "backend":
            _backends.get(value)       # fail now on an unknown or unavailable backend
        object.__setattr__(self, name, value)

    def _checked_param(self, name, value):
        a = _to_numpy(name, value)
        expected = self._params[name].shape
        if a.shape != expected:
            raise ValueError(f"{name} must have shape {expected}, got shape {a.shape}")
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
        return v.contiguous(a, self.dtype)

    def named_parameters(self):
        """``(name, array)`` pairs in PyTorch's order."""
        return iter(self._params.items())

    def parameters(self):
        return iter(self._params.values())

    @property
    def all_weights(self):
        """Per layer and direction, the list of its parameter arrays (as PyTorch)."""
        return [[self._params[n] for n in names.values()] for names in self._names]

    def reset_parameters(self, rng=None):
        """Draw every parameter from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), in place.

        ``rng`` (a seed or ``numpy.random.Generator``) defaults to the layer's own.
        """
        gen = self._rng if rng is None else np.random.default_rng(rng)
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self._params.values():
            p[...] = gen.uniform(-k, k, p.shape)

    def state_dict(self):
        """``{name: array}`` with PyTorch's names, referencing the layer's arrays (as PyTorch)."""
        return dict(self._params)

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters in from ``{name: array or torch tensor}`` (PyTorch's names).

        Values are cast to the layer's dtype and copied into the existing arrays.
        With ``strict`` (the default) every name must be present and no other;
        shapes must always match. Raises one error listing every problem.
        Returns ``(missing_keys, unexpected_keys)`` as PyTorch.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        missing = [n for n in self._params if n not in state_dict]
        unexpected = [n for n in state_dict if n not in self._params]
        problems = []
        if strict and missing:
            problems.append("missing key(s): " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected key(s): " + ", ".join(map(str, unexpected)))
        values = {}
        for name in self._params:
            if name not in state_dict:
                continue
            try:
                values[name] = self._checked_param(name, state_dict[name])
            except (TypeError, ValueError) as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError(f"error(s) loading state_dict into {self!r}:\n  "
                             + "\n  ".join(problems))
        for name, value in values.items():
            self._params[name][...] = value
        return missing, unexpected

    def freeze(self):
        """An inference-only snapshot of this layer, :class:`fastrnn.frozen.Frozen`:
        read-only copies of the weights, and what the kernels derive from them
        (packed panels, bias sums) derived once instead of on every call. Its
        calls give the bits this layer's ``forward`` gives now."""
        return Frozen(self)

    def to_torch(self):
        """A ``torch.nn.RNN``/``LSTM``/``GRU`` with the same options and weights."""
        from .interop import to_torch
        return to_torch(self)

    # ------------------------------------------------------------------ input

    def _check_input(self, x, hx, lengths):
        """Time-major contiguous x, per-state (L*D, B, n) arrays or None, lengths, unbatched."""
        x = _to_numpy("x", x)
        if x.dtype != self.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the layer is {self.dtype}; cast x with "
                            f"x.astype(np.{self.dtype}) or build the layer with dtype=np.{x.dtype}"
                            if x.dtype in v.FLOAT_DTYPES else
                            f"x must be a float array of the layer's dtype {self.dtype}, "
                            f"got dtype {x.dtype}")
        if x.ndim not in (2, 3):
            layout = "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"
            raise ValueError(f"x must be 3-D {layout}, or 2-D (T, input_size) for one "
                             f"unbatched sequence; got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x must have input_size={self.input_size} features in its last "
                             f"axis, got shape {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
            if lengths is not None:
                raise ValueError("lengths needs batched 3-D input; for one unbatched "
                                 "sequence pass x[:length] instead")
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        x = v.sequence_input(x)     # also BLAS's size limit, which kernels._run trusts
        T, B, _ = x.shape
        states = self._check_states("hx", hx, B, unbatched)
        lengths = v.lengths_array(lengths, T, B)
        return x, states, lengths, unbatched

    def _check_states(self, name, hx, B, unbatched):
        """``hx`` (or ``dhx``) as a tuple with one (L*D, B, n) array or None per state."""
        names = self._cell.state_names
        LD = self.num_layers * self.num_directions
        if hx is None:
            return (None,) * len(names)
        if len(names) == 1:
            parts = (hx,)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                pair = "(h_0, c_0)" if name == "hx" else "(dh_n, dc_n)"
                raise TypeError(f"{name} must be a tuple {pair} for the LSTM (either may be "
                                f"None), got {type(hx).__name__}")
            parts = tuple(hx)
        out = []
        for j, (s, part) in enumerate(zip(names, parts)):
            if part is None:
                out.append(None)
                continue
            label = name if len(names) == 1 else f"{name}[{j}]"
            a = _to_numpy(label, part)
            n = self._state_sizes[j]
            shape = (LD, n) if unbatched else (LD, B, n)
            if a.shape != shape:
                what = ("(num_layers*num_directions, "
                        + ("" if unbatched else "batch, ")
                        + ("hidden_size" if n == self.hidden_size else "proj_size") + ")")
                extra = (" (2-D, because x is unbatched)" if unbatched else "")
                raise ValueError(f"{label} must have shape {what} = {shape}{extra}, "
                                 f"got shape {a.shape}")
            if a.dtype != self.dtype:
                raise TypeError(f"{label} must have the layer's dtype {self.dtype}, got {a.dtype}")
            if unbatched:
                a = a[:, None, :]
            out.append(a)
        return tuple(out)

    # ---------------------------------------------------------------- forward

    def _kernel_params(self, idx):
        """``params`` of layer/direction ``idx`` as ``kernels._run`` takes them.

        ``(weight_ih, weight_hh, bias_ih, bias_hh[, weight_hr])``, read-only
        zeros for absent biases: what ``v.layer_params`` would return, without
        checking again on every call (a streaming step is ~30 us) what cannot
        change. Cached: the parameters are C-contiguous arrays of the layer's
        dtype and shape, changed in place or through ``__setattr__``, which
        checks the new array and clears the cache.
        """
        params = self._params_cache.get(idx)
        if params is None:
            names = self._names[idx]
            p = self._params
            if self.bias:
                biases = (p[names["bias_ih"]], p[names["bias_hh"]])
            else:
                zeros = np.zeros(self._cell.n_gates * self.hidden_size, self.dtype)
                zeros.flags.writeable = False
                biases = (zeros, zeros)
            params = (p[names["weight_ih"]], p[names["weight_hh"]]) + biases
            if self.proj_size:
                params += (p[names["weight_hr"]],)
            self._params_cache[idx] = params
        return params

    def forward(self, x, hx=None, lengths=None, *, training=False, rng=None):
        """Run the layer over a batch of sequences.

        Parameters
        ----------
        x : array
            ``(T, B, input_size)``, ``(B, T, input_size)`` with ``batch_first``,
            or ``(T, input_size)`` for one unbatched sequence; the layer's dtype.
        hx : array, (array, array) for the LSTM, or None
            Initial states ``(num_layers*num_directions, B, Hout)`` (and ``c_0``
            ``(..., B, hidden_size)``); 2-D for unbatched input. None: zeros.
        lengths : (B,) int array, optional
            Valid steps per sequence, any order, ``0 <= lengths[b] <= T``:
            PyTorch's packed-sequence results for every layer and direction
            (outputs past the length are zero; final states are those after each
            sequence's last valid step; the reverse direction starts there).
        training : bool
            Keep what the backward needs and apply dropout between layers;
            a third value, the :class:`Context`, is returned.
        rng : seed or numpy.random.Generator, optional
            Draws the dropout masks (default: the layer's generator).

        Returns
        -------
        y : ``(T, B, D*Hout)`` (``(B, T, ...)`` with ``batch_first``)
        h_n, or (h_n, c_n) for the LSTM : ``(num_layers*num_directions, B, Hout)``
        ctx : :class:`Context`, only with ``training=True``
        """
        training = v.flag("training", training)
        x, states, lengths, unbatched = self._check_input(x, hx, lengths)
        T, B, _ = x.shape
        L, D = self.num_layers, self.num_directions
        if L * D == 1 and not training:
            # one layer, one direction (a latency-bound call's usual case):
            # its final states are the layer's
            y, state_n, _ = self._run_direction(0, x, states, lengths, False)
            h_n = state_n if unbatched else tuple(s[None] for s in state_n)
            return (self._to_user_layout(y, unbatched, self.batch_first),
                    h_n[0] if len(h_n) == 1 else h_n)
        finals = [np.empty((L * D, B, n), self.dtype) for n in self._state_sizes]
        workspaces, masks = [], []
        p = self.dropout if training else 0.0
        gen = None
        layer_in = x
        for k in range(L):
            def direction(d, k=k, layer_in=layer_in):
                return self._run_direction(k * D + d, layer_in, states, lengths, training)
            # the directions are independent: side by side on the cores
            results = [direction(0)] if D == 1 else \
                _parallel.run_independent(direction, D, self._macs(k, T, B))
            for d, (_, state_n, ws) in enumerate(results):
                for f, s_n in zip(finals, state_n):
                    f[k * D + d] = s_n
                if training:
                    workspaces.append(ws)
            outs = [r[0] for r in results]
            layer_in = outs[0] if D == 1 else np.concatenate(outs, axis=2)
            if p > 0 and k < L - 1:
                if gen is None:
                    gen = self._rng if rng is None else np.random.default_rng(rng)
                mask = _dropout_mask(gen, layer_in.shape, p, self.dtype)
                layer_in = layer_in * mask
                masks.append(mask)
        y = self._to_user_layout(layer_in, unbatched, self.batch_first)
        h_n = tuple(f[:, 0] if unbatched else f for f in finals)
        h_n = h_n[0] if len(h_n) == 1 else h_n
        if not training:
            return y, h_n
        ctx = Context(self, workspaces, masks, T, B, unbatched, self.batch_first, self.dtype)
        return y, h_n, ctx

    __call__ = forward

    def _run_direction(self, idx, layer_in, states, lengths, training):
        """``kernels._run`` for layer and direction ``idx`` (k * D + d) over
        ``layer_in``, from ``states`` (``_check_input``'s; None: zeros)."""
        B = layer_in.shape[1]
        state0 = tuple(np.zeros((B, n), self.dtype) if s is None else v.contiguous(s[idx])
                       for s, n in zip(states, self._state_sizes))
        return kernels._run(self.mode, layer_in, state0, self._kernel_params(idx), self.bias,
                            self.hidden_size, self.proj_size or None, lengths,
                            idx % self.num_directions == 1, training, self.backend)

    def _macs(self, k, T, B):
        """Multiply-adds of one direction of layer ``k`` over T steps of B rows."""
        w_ih, w_hh = self._kernel_params(k * self.num_directions)[:2]
        return T * B * (w_ih.size + w_hh.size)

    @staticmethod
    def _to_user_layout(a, unbatched, batch_first):
        """A time-major (T, B, n) array in the caller's layout."""
        if unbatched:
            return a[:, 0]
        if batch_first:
            return np.ascontiguousarray(a.transpose(1, 0, 2))
        return a

    def step(self, x, hx=None):
        """One time step with carried state, for streaming.

        ``x`` is ``(B, input_size)`` or ``(input_size,)``; returns
        ``(y, h)`` (LSTM: ``(y, (h, c))``) with ``y`` ``(B, Hout)`` (or ``(Hout,)``)
        and ``h`` shaped like ``hx``. Feeding ``h`` back gives the results of
        running the whole sequence at once: bit for bit on the reference
        backend; to a few ulp on the native ones, which project all the steps
        of a sequence with one product, summing in another order than a
        single step's. Unidirectional only.
        """
        return self._step(x, hx, self.forward)

    def _step(self, x, hx, forward):
        """``step`` through ``forward`` (the layer's, or a frozen layer's)."""
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional layer: the reverse direction of "
                             "a bidirectional layer reads the sequence from its end")
        x = _to_numpy("x", x)
        if x.ndim not in (1, 2):
            raise ValueError(f"step() takes one time step: x must be (B, input_size) or "
                             f"(input_size,), got shape {x.shape}")
        if x.ndim == 1:
            y, h = forward(x[None, :], hx)
            return y[0], h
        y, h = forward(x[:, None, :] if self.batch_first else x[None], hx)
        return (y[:, 0] if self.batch_first else y[0]), h

    # --------------------------------------------------------------- backward

    def backward(self, ctx, dy=None, dhx=None):
        """Gradients of a training forward.

        Parameters
        ----------
        ctx : Context
            From ``forward(..., training=True)`` of this layer.
        dy : array or None
            Gradient with respect to ``y``, shaped like ``y`` (None: zero).
        dhx : array, (array or None, array or None) for the LSTM, or None
            Gradients with respect to ``h_n`` (and ``c_n``), shaped like them.

        Returns
        -------
        LayerGrads
            ``dx`` shaped like x; ``dhx`` the gradient of the initial states
            (``dh_0`` or ``(dh_0, dc_0)``, also when hx was None); ``dparams``
            ``{name: gradient}`` for every parameter.
        """
        if not isinstance(ctx, Context):
            raise TypeError("ctx must be the Context returned by forward(..., training=True), "
                            f"got {type(ctx).__name__}")
        if ctx.layer is not self:
            raise ValueError("ctx comes from a forward of another layer")
        T, B, unbatched = ctx.T, ctx.B, ctx.unbatched
        L, D, P = self.num_layers, self.num_directions, self.output_size
        cell = self._cell
        d_out = None
        if dy is not None:
            dy = _to_numpy("dy", dy)
            if unbatched:
                shape = (T, D * P)
            else:
                shape = (B, T, D * P) if ctx.batch_first else (T, B, D * P)
            if dy.shape != shape:
                raise ValueError(f"dy must have the shape of y, {shape}, got shape {dy.shape}")
            if dy.dtype != self.dtype:
                raise TypeError(f"dy must have the layer's dtype {self.dtype}, got {dy.dtype}")
            if unbatched:
                d_out = dy[:, None, :]
            else:
                d_out = dy.transpose(1, 0, 2) if ctx.batch_first else dy
        dstate_n = self._check_states("dhx", dhx, B, unbatched)
        dstate0 = [np.empty((L * D, B, n), self.dtype) for n in self._state_sizes]
        grads = {}
        S = len(cell.state_names)
        for k in reversed(range(L)):
            def direction(d, k=k, d_out=d_out):
                idx = k * D + d
                dyd = None
                if d_out is not None:
                    dyd = d_out if D == 1 else d_out[:, :, d * P:(d + 1) * P]
                return cell.backward(ctx.workspaces[idx], dyd,
                                     *(None if s is None else s[idx] for s in dstate_n))
            dx_k = None
            # the directions' backwards are independent too; dx sums in a fixed order
            for d, g in enumerate(_parallel.run_independent(direction, D, self._macs(k, T, B))):
                idx = k * D + d
                if dx_k is None:
                    dx_k = g[0]
                else:
                    dx_k += g[0]
                for j in range(S):
                    dstate0[j][idx] = g[1 + j]
                fields = g._asdict()
                for kind, name in self._names[idx].items():
                    grads[name] = fields["d" + kind]
            if k > 0 and ctx.dropout_masks:
                dx_k *= ctx.dropout_masks[k - 1]
            d_out = dx_k
        dx = self._to_user_layout(d_out, unbatched, ctx.batch_first)
        dhx = tuple(s[:, 0] if unbatched else s for s in dstate0)
        dhx = dhx[0] if S == 1 else dhx
        return LayerGrads(dx, dhx, {name: grads[name] for name in self._params})

    # ------------------------------------------------------------------- repr

    def __repr__(self):
        s = f"{type(self).__name__}({self.input_size}, {self.hidden_size}"
        defaults = dict(num_layers=1, bias=True, batch_first=False, dropout=0.0,
                        bidirectional=False, proj_size=0)
        for key, default in defaults.items():
            value = getattr(self, key)
            if value != default:
                s += f", {key}={value}"
        if self.nonlinearity == "relu":
            s += ", nonlinearity='relu'"
        if self.dtype != np.float32:
            s += f", dtype={self.dtype}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s + ")"


def _dropout_mask(gen, shape, p, dtype):
    """Scaled Bernoulli mask: 0 with probability p, else 1/(1-p) (PyTorch's dropout)."""
    if p >= 1:
        return np.zeros(shape, dtype)
    keep = gen.random(shape, dtype=dtype) >= p
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - p))


def _to_numpy(name, value):
    """An ndarray from an array-like or a (CPU) torch tensor, without copying when possible."""
    # an ndarray first: hasattr raises and catches AttributeError (0.3 us a call)
    if type(value) is not np.ndarray and hasattr(value, "detach") and hasattr(value, "cpu"):
        # a torch tensor
        return value.detach().cpu().numpy()
    return v.as_array(name, value)


class RNN(_RNNBase):
    """Elman RNN, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, act = tanh or relu.

    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, *, dtype=np.float32,
    backend='auto', rng=None)``, as ``torch.nn.RNN``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *,
                 dtype=np.float32, backend="auto", rng=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, dtype=dtype, backend=backend,
                         rng=rng)


class LSTM(_RNNBase):
    """LSTM (gate order i, f, g, o), optionally projected: ``h = W_hr (o * tanh(c))``.

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, proj_size=0, *, dtype=np.float32,
    backend='auto', rng=None)``, as ``torch.nn.LSTM``. ``hx`` is ``(h_0, c_0)``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *,
                 dtype=np.float32, backend="auto", rng=None):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, dtype=dtype, backend=backend,
                         rng=rng)


class GRU(_RNNBase):
    """GRU (gate order r, z, n; reset applied after ``W_hn h + b_hn``, as PyTorch).

    ``GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, *, dtype=np.float32, backend='auto',
    rng=None)``, as ``torch.nn.GRU``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, dtype=np.float32, backend="auto",
                 rng=None):
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype=dtype, backend=backend, rng=rng)
