# cython: language_level=3, boundscheck=False, wraparound=False
"""The packed-panel recurrent product of _packed_gemm.h, for sizing and testing."""
from cython cimport floating
from _blas cimport NT_MAX_ROWS as _NT_MAX_ROWS
from _recurrent cimport Recurrent, recurrent, recurrent_product, check_packed, pack as pack_

cdef extern from "_packed_gemm.h" nogil:
    Py_ssize_t fr_packed_size(Py_ssize_t K, Py_ssize_t N)
    int FR_PANEL

PANEL = FR_PANEL
#: float32 products by W^T of at most this many rows stream W once for all of
#: them (src_ext/_small_gemm.h through _blas.gemm); their bits depend on K only
NT_MAX_ROWS = _NT_MAX_ROWS


def packed_size(Py_ssize_t K, Py_ssize_t N):
    """Floats needed to pack a (K, N) operand."""
    return fr_packed_size(K, N)


def product(const floating[:, ::1] h, const floating[:, ::1] w, bint trans,
            floating beta, floating[:, ::1] out, float[::1] packed=None, int n_threads=1,
            Py_ssize_t step=0):
    """out := h @ op(w) + beta * out exactly as the kernels compute it per step.

    op(w) is w.T when ``trans`` (w is (N, K)), else w (K, N); with ``packed``
    (float32 only) the packed-panel kernel runs, otherwise BLAS. ``step``: the
    time loop's step it stands for (odd steps walk the panels backwards).
    """
    cdef Py_ssize_t B = h.shape[0], K = h.shape[1], N = out.shape[1]
    cdef tuple op_shape = (w.shape[1], w.shape[0]) if trans else (w.shape[0], w.shape[1])
    if op_shape != (K, N):
        raise ValueError("shapes do not match")
    if out.shape[0] != B or (beta != 0 and beta != 1):
        raise ValueError("out must be (B, N) and beta 0 or 1")
    cdef float* packed_ = check_packed(packed, K, N)
    cdef Recurrent r
    with nogil:
        if floating is float:
            if packed_ != NULL:
                pack_(&w[0, 0], trans, K, N, packed_)
        r = recurrent(&w[0, 0], trans, K, N, packed_, n_threads)
        recurrent_product(&r, B, &h[0, 0], beta, &out[0, 0], step)


def pack(const float[:, ::1] w, bint trans, float[::1] packed):
    """Pack op(w) into ``packed`` for the kernels' ``packed`` argument.

    op(w) is w.T when ``trans`` (w is (N, K), PyTorch's layout), else w (K, N);
    ``packed`` holds at least ``packed_size(K, N)`` floats.
    """
    cdef Py_ssize_t K = w.shape[1] if trans else w.shape[0]
    cdef Py_ssize_t N = w.shape[0] if trans else w.shape[1]
    cdef float* packed_ = check_packed(packed, K, N)
    if packed_ == NULL:
        raise ValueError("packed must be a float32 buffer")
    with nogil:
        pack_(&w[0, 0], trans, K, N, packed_)
