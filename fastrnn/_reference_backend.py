"""The NumPy reference exposed through the backend interface (see ``_backends``)."""
import numpy as np

from . import reference

#: handles ``params = (w_ih, w_hh, b_ih, b_hh, w_hr)``: an LSTM with a projection
PROJECTION = True


def forward(cell, x, state0, params, lengths, reverse, training):
    y, state_n, tape = reference.forward(cell, x, state0, params, lengths, reverse)
    data = (tape, params, x.shape, y.shape, tuple(s.shape for s in state0)) if training else None
    return y, state_n, data


def backward(cell, data, dy, dstate_n):
    tape, params, x_shape, y_shape, state_shapes = data
    dtype = params[0].dtype
    if dy is None:
        dy = np.zeros(y_shape, dtype)
    dstate_n = tuple(np.zeros(shape, dtype) if d is None else d
                     for d, shape in zip(dstate_n, state_shapes))
    return reference.backward(cell, tape, params, x_shape, dy, dstate_n)
