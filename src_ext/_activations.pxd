# cython: language_level=3
"""Scalar activations, inlined into the fused element-wise loops."""
from cython cimport floating
from libc.math cimport exp, expf, tanh, tanhf, fabs, fabsf


cdef inline floating sigmoid(floating a) noexcept nogil:
    # exp of -|a| only, so it cannot overflow for saturated gates
    cdef floating e
    if floating is float:
        e = expf(-fabsf(a))
    else:
        e = exp(-fabs(a))
    if a >= 0:
        return 1 / (1 + e)
    return e / (1 + e)


cdef inline floating tanh_(floating a) noexcept nogil:
    if floating is float:
        return tanhf(a)
    else:
        return tanh(a)
