# cython: language_level=3
"""Scalar activations, inlined into the fused element-wise loops."""
from cython cimport floating
from libc.math cimport exp, tanh, fabs

cdef extern from "_vmath.h" nogil:
    # float32: branch-free, vectorisable, error bounds in the header
    float fr_sigmoidf(float x)
    float fr_tanhf(float x)


cdef inline floating sigmoid(floating a) noexcept nogil:
    cdef double e
    if floating is float:
        return fr_sigmoidf(a)
    else:
        # exp of -|a| only, so it cannot overflow for saturated gates
        e = exp(-fabs(a))
        return 1 / (1 + e) if a >= 0 else e / (1 + e)


cdef inline floating tanh_(floating a) noexcept nogil:
    if floating is float:
        return fr_tanhf(a)
    else:
        return tanh(a)


cdef inline floating one_minus(floating a) noexcept nogil:
    """1 - a in a's own precision. Cython writes a bare ``1 - a`` with the
    double literal 1.0, which takes float32 arithmetic through double
    (conversions both ways, half-width vectors) in the fused loops."""
    return <floating> 1 - a


cdef inline floating one_minus_square(floating a) noexcept nogil:
    """1 - a*a, the derivative of tanh at output a, as (1 - a)(1 + a): for a
    saturated unit (|a| near 1) 1 - a is exact, where 1 - a*a loses a*a's
    rounding to cancellation unless the compiler fuses it into an FMA, which
    the baseline build cannot (float32: up to 4.5e-5 relative against ~1e-7;
    test_saturated_tanh_derivative_keeps_its_relative_accuracy)."""
    return (<floating> 1 - a) * (<floating> 1 + a)
