"""A frozen layer's inference call of one input shape, decided once.

A short call spends more time in Python than in its kernels: a frozen RNN's
one step, (1, 1, 128, 128), took 12.7 µs, of which the kernel call was 3.3
and the rest the layer's checks and conversions of x and the states, its
loop over layers and directions, ``kernels._run`` and the split backend's
lookup of its planned call, each a few calls deep (benchmarks/RESULTS.md).
ONNX Runtime's session took 8.5 µs for the same step.

A :class:`Plan` keeps what such a call decides from the shape of x alone:
its layout, the states' shapes, and each layer and direction's planned
backend call (``_parallel.SplitBackend._planned``, the same object the layer's
own path runs). A call whose arrays are exactly what the plan expects (plain
C-contiguous ndarrays of the layer's dtype and shapes) runs those planned
calls directly. Anything else (``lengths``, array-likes, torch tensors, other
dtypes or strides) goes through the layer's ``forward``, which checks,
converts and explains. Both run the same planned calls on the same operands,
so they give the same bits.
"""
import numpy as np

from . import _backends, _parallel, kernels
from ._validate import BLAS_INT_MAX


class Plan:
    """The inference call of a frozen ``layer`` (the ``Frozen``'s inner
    layer) on x of one shape and under one ``_parallel.plan_context()``.

    ``plan(x, hx)`` returns ``(y, h_n)`` as ``layer.forward(x, hx)`` would, or
    None when ``x`` or ``hx`` are not plain arrays of the plan's shapes and
    dtype, for the caller to take the layer's ``forward`` instead.
    """

    __slots__ = ("layer", "runs", "zeros", "state_shapes", "time_major", "unbatched",
                 "n_directions", "n_layers", "dtype", "hold", "batch_first")

    def __init__(self, layer, runs, B, unbatched):
        self.layer = layer
        self.runs = runs
        self.dtype = layer.dtype
        self.unbatched = unbatched
        self.time_major = unbatched or not layer.batch_first
        self.batch_first = layer.batch_first
        self.n_layers, self.n_directions = layer.num_layers, layer.num_directions
        LD = self.n_layers * self.n_directions
        sizes = layer._state_sizes
        self.state_shapes = tuple((LD, n) if unbatched else (LD, B, n) for n in sizes)
        # the initial state None stands for; read-only, as the kernels only
        # copy it into their own state buffers
        self.zeros = tuple(np.zeros((B, n), self.dtype) for n in sizes)
        for z in self.zeros:
            z.flags.writeable = False
        self.hold = _parallel.blas_hold()

    def _states(self, hx):
        """``hx`` as one (L*D, B, n) array or None per state; None if it is
        not exactly what the plan expects."""
        shapes, dtype = self.state_shapes, self.dtype
        if len(shapes) == 1:
            parts = (hx,)
        elif type(hx) is tuple and len(hx) == 2:
            parts = hx
        else:
            return None
        for a, shape in zip(parts, shapes):
            if a is not None and (type(a) is not np.ndarray or a.shape != shape
                                  or a.dtype != dtype or not a.flags.c_contiguous):
                return None
        if self.unbatched:
            return tuple([None if a is None else a[:, None, :] for a in parts])
        return parts

    def __call__(self, x, hx):
        if x.dtype != self.dtype:
            return None
        if self.unbatched:
            x = x[:, None, :]
        elif not self.time_major:
            x = x.transpose(1, 0, 2)
        if not x.flags.c_contiguous:
            return None
        states = None
        if hx is not None:
            states = self._states(hx)
            if states is None:
                return None
        if len(self.runs) == 1:
            y, h_n = self._one(x, states)
        else:
            y, h_n = self._stack(x, states)
        y = self.layer._to_user_layout(y, self.unbatched, self.batch_first)
        return y, (h_n[0] if len(h_n) == 1 else h_n)

    def _initial(self, states, idx):
        """The initial states of run ``idx``: zeros where ``states`` has None."""
        z = self.zeros
        if states is None:
            return z
        # one state or two (the LSTM's), written out: a frozen layer's one-step
        # call runs this every time
        h = z[0] if states[0] is None else states[0][idx]
        if len(z) == 1:
            return (h,)
        return (h, z[1] if states[1] is None else states[1][idx])

    def _one(self, x, states):
        """One layer, one direction: its final states are the layer's."""
        with self.hold:
            y, state_n, _ = self.runs[0](x, self._initial(states, 0), None)
        if self.unbatched:
            return y, state_n
        if len(state_n) == 1:
            return y, (state_n[0][None],)
        return y, (state_n[0][None], state_n[1][None])

    def _stack(self, x, states):
        """Layer after layer, the directions of each one after the other
        (``make`` leaves calls whose directions run side by side to the layer)."""
        runs, D = self.runs, self.n_directions
        finals = [None] * len(self.zeros)
        with self.hold:
            layer_in = x
            for k in range(self.n_layers):
                outs = []
                for d in range(D):
                    idx = k * D + d
                    y, state_n, _ = runs[idx](layer_in, self._initial(states, idx), None)
                    for j, s_n in enumerate(state_n):
                        if finals[j] is None:
                            finals[j] = np.empty((len(runs),) + s_n.shape, self.dtype)
                        finals[j][idx] = s_n
                    outs.append(y)
                layer_in = outs[0] if D == 1 else np.concatenate(outs, axis=2)
        if self.unbatched:
            finals = [f[:, 0] for f in finals]
        return layer_in, tuple(finals)


def make(layer, shape):
    """The :class:`Plan` of a frozen ``layer``'s inference calls on x of
    ``shape`` under the current ``_parallel.plan_context()``, or None where
    the layer's ``forward`` must run them: shapes it rejects or runs on the
    reference backend (no rows or no steps), backends without planned
    calls, and bidirectional layers whose directions would run side by side
    on their own threads (``_parallel.run_independent``), calls large enough
    for the Python to be noise."""
    if len(shape) not in (2, 3) or shape[-1] != layer.input_size:
        return None
    unbatched = len(shape) == 2
    if unbatched:
        T, B = shape[0], 1
    else:
        T, B = shape[:2] if not layer.batch_first else shape[1::-1]
    if T == 0 or B == 0 or T * B > BLAS_INT_MAX:
        return None
    P = layer.proj_size or None
    module = (_backends.get(layer.backend) if P is None
              else kernels._projection_backend(layer.backend))
    if not hasattr(module, "_planned"):
        return None
    D = layer.num_directions
    runs = []
    for idx in range(layer.num_layers * D):
        params = layer._kernel_params(idx)
        I = params[0].shape[1]
        if D == 2 and _parallel.side_by_side(D, layer._macs(idx // D, T, B)):
            return None
        runs.append(module._planned(layer.mode, layer.dtype, T, B, I, params, idx % D == 1))
    return Plan(layer, runs, B, unbatched)


def lookup(plans, layer, shape):
    """The plan for x of ``shape`` from ``plans`` (a frozen layer's, by shape
    and ``_parallel.plan_context()``), made at the first such call; None
    where ``make`` gives none. A stream of ever new shapes keeps the newest
    ``_parallel.MAX_PLANS``."""
    key = (shape, _parallel.plan_context())
    plan = plans.get(key, _UNSEEN)
    if plan is _UNSEEN:
        plan = make(layer, shape)
        if len(plans) >= _parallel.MAX_PLANS:
            plans.clear()
        plans[key] = plan
    return plan


_UNSEEN = object()
