# cython: language_level=3, boundscheck=False, wraparound=False
"""The kernels' activations applied to arrays, so tests can bound their error."""
from cython cimport floating
from _activations cimport sigmoid as _sigmoid, tanh_ as _tanh


def sigmoid(const floating[::1] x, floating[::1] out):
    """out := sigmoid(x), exactly as the kernels compute it."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(x.shape[0]):
            out[i] = _sigmoid(x[i])


def tanh(const floating[::1] x, floating[::1] out):
    """out := tanh(x), exactly as the kernels compute it."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(x.shape[0]):
            out[i] = _tanh(x[i])
