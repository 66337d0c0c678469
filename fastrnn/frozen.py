"""Frozen layers: inference with the weights checked and prepared once.

A layer's weights may change between any two calls (an optimizer updates them
in place), so every ``RNN``/``LSTM``/``GRU.forward`` derives from them again
what the kernels read: W_hh^T and W_ih^T packed into panels, the two biases
summed. For a model whose weights are done changing, ``layer.freeze()``
returns a :class:`Frozen` layer that keeps read-only copies of them and
derives all that once, at its first call of each kind, as ONNX Runtime does
when its session is built. Its calls then give the bits the layer gave.

The backends find the derived arrays through :func:`memo`: a frozen layer
hands its kernels :class:`FrozenParams` instead of a plain tuple. A frozen
layer also keeps each inference call's decisions, by shape and threads
(``_parallel.SplitBackend._planned``): how the call splits its work, its
kernel and operands. They are made under the module settings
(``_cython_backend.PIPELINE_MIN_MACS`` ...) of the first call of that
shape; to try other settings, freeze the layer again.
"""
import copy

import numpy as np

_inference_plan = None      # the module, imported by the first Frozen (see there)


class FrozenParams(tuple):
    """One layer and direction's ``params`` (as ``kernels._run`` takes them),
    read-only; ``prepared``: what the backends derived from them, by key;
    ``plans``: the decisions of an inference call, by shape and threads
    (``_parallel.SplitBackend._planned``)."""

    def __new__(cls, arrays):
        self = super().__new__(cls, arrays)
        self.prepared = {}
        self.plans = {}
        return self


def memo(params, key, make):
    """``make()``, kept under ``key`` for frozen ``params`` (:class:`FrozenParams`),
    made again on every call for a plain tuple. ``key`` names what ``make``
    derives and from which of ``params`` (and, for layouts that differ
    between backends, which backend)."""
    store = getattr(params, "prepared", None)
    if store is None:
        return make()
    value = store.get(key)
    if value is None:
        value = store[key] = make()
    return value


def _read_only_copy(a):
    a = np.array(a, copy=True, order="C")
    a.flags.writeable = False
    return a


class Frozen:
    """An inference-only snapshot of a recurrent layer (``layer.freeze()``).

    The weights are copied when it is made: later changes to the layer do not
    reach it, and its own copies are read-only. Every call gives the bits the
    layer's ``forward`` gave for the same input at the time of freezing, on the
    same backend and threads, without the per-call work of deriving the
    kernels' operands from the weights (packing W_hh^T and W_ih^T into
    panels, summing the biases), which the first call of each kind does once
    and keeps (a few times the size of the weights at most).

    Parameters
    ----------
    layer : fastrnn.RNN, fastrnn.LSTM or fastrnn.GRU
        The layer to snapshot: its options (``batch_first``, ``bidirectional``,
        ``num_layers``, ``proj_size``, ``backend``, ...) and weights.
    """

    def __init__(self, layer):
        from .layers import _RNNBase    # at call time: layers imports this module
        if not isinstance(layer, _RNNBase):
            raise TypeError("layer must be a fastrnn.RNN, LSTM or GRU, got "
                            f"{type(layer).__name__}")
        inner = copy.copy(layer)        # the options; the parameters are replaced below
        params = {name: _read_only_copy(a) for name, a in layer.named_parameters()}
        object.__setattr__(inner, "_params", params)
        object.__setattr__(inner, "_params_cache", {})
        for idx in range(len(inner._names)):
            inner._params_cache[idx] = FrozenParams(inner._kernel_params(idx))
        self._layer = inner
        object.__setattr__(self, "_plans", {})
        # imported here: it imports _parallel, which imports this module
        global _inference_plan
        from . import _inference_plan  # noqa: F811

    def forward(self, x, hx=None, lengths=None):
        """Inference over a batch of sequences: the layer's ``forward`` with
        ``training=False`` (see it for ``x``, ``hx``, ``lengths`` and the results).

        Returns
        -------
        y : ``(T, B, D*Hout)`` (``(B, T, ...)`` with ``batch_first``)
        h_n, or (h_n, c_n) for the LSTM : ``(num_layers*num_directions, B, Hout)``
        """
        if lengths is None and type(x) is np.ndarray:
            # this shape's call, decided once (``fastrnn._inference_plan``)
            plan = _inference_plan.lookup(self._plans, self._layer, x.shape)
            if plan is not None:
                result = plan(x, hx)
                if result is not None:
                    return result
        return self._layer.forward(x, hx, lengths)

    __call__ = forward

    def step(self, x, hx=None):
        """One time step with carried state, as the layer's ``step``."""
        return self._layer._step(x, hx, self.forward)

    def named_parameters(self):
        """``(name, array)`` pairs in PyTorch's order: the read-only copies."""
        return self._layer.named_parameters()

    def state_dict(self):
        """The parameters by name (copies, writeable), for ``load_state_dict`` of a layer."""
        return {name: a.copy() for name, a in self.named_parameters()}

    def __getattr__(self, name):
        # the layer's options and parameters by name, read-only
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _OPTIONS or name in self._layer._params:
            return getattr(self._layer, name)
        raise AttributeError(f"'Frozen' object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name == "_layer" and "_layer" not in self.__dict__:
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"a Frozen layer cannot change ({name!r}); change the layer "
                             "and freeze it again")

    def __repr__(self):
        return f"Frozen({self._layer!r})"

    def __reduce__(self):
        # pickled as the layer it snapshots: what it derived (panels, plans
        # holding compiled kernels) is made again by the copy's first calls
        inner = copy.copy(self._layer)
        object.__setattr__(inner, "_params_cache", {})
        return (Frozen, (inner,))


#: the layer's options a Frozen layer shows
_OPTIONS = ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
            "bidirectional", "proj_size", "dtype", "backend", "num_directions",
            "output_size", "nonlinearity")
