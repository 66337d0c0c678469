"""The NumPy reference exposed through the backend interface (see ``_backends``)."""
import numpy as np

from . import reference


def forward(cell, x, state0, params, lengths, reverse, training):
    y, state_n, tape = reference.forward(cell, x, state0, params, lengths, reverse)
    data = (tape, params, x.shape) if training else None
    return y, state_n, data


def backward(cell, data, dy, dstate_n):
    tape, params, x_shape = data
    T, B, _ = x_shape
    H = params[1].shape[1]
    dtype = params[0].dtype
    if dy is None:
        dy = np.zeros((T, B, H), dtype)
    dstate_n = tuple(np.zeros((B, H), dtype) if d is None else d for d in dstate_n)
    return reference.backward(cell, tape, params, x_shape, dy, dstate_n)
