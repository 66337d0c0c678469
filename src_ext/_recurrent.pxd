# cython: language_level=3
"""The per-step recurrent product, out := h @ op(W) + beta * out, W fixed for a call.

float32 with a small batch uses the packed-panel kernel of _packed_gemm.h: W
is packed before the call (``pack``, from Python through ``packing.pack``, so
that the parts of a split batch share one copy) and streamed once per step,
its panels split over threads. Everything else goes to BLAS, which reads
PyTorch's layout through the transpose flag, so no call copies a weight
matrix. Python picks the path (a packed buffer or None) because that is where
it is measured and tested.
"""
from cython cimport floating
from cython.parallel cimport prange
from _blas cimport gemm

cdef extern from "_packed_gemm.h" nogil:
    int FR_PANEL
    Py_ssize_t fr_n_panels(Py_ssize_t N)
    Py_ssize_t fr_packed_size(Py_ssize_t K, Py_ssize_t N)
    void fr_pack_panels(Py_ssize_t K, Py_ssize_t N, const float* w, int trans,
                        float* packed)
    void fr_pack_panel_range(Py_ssize_t K, Py_ssize_t N, const float* w, int trans,
                             float* packed, Py_ssize_t p0, Py_ssize_t p1)
    void fr_gemm_packed(Py_ssize_t B, Py_ssize_t N, Py_ssize_t K, const float* A,
                        Py_ssize_t lda, const float* packed, float beta, float* C,
                        Py_ssize_t ldc, Py_ssize_t p0, Py_ssize_t p1, int descending)
    void fr_gemm_packed_bias(Py_ssize_t B, Py_ssize_t N, Py_ssize_t K, const float* A,
                             Py_ssize_t lda, const float* packed, float beta, float* C,
                             Py_ssize_t ldc, Py_ssize_t p0, Py_ssize_t p1, int descending,
                             const float* bias)


cdef struct Recurrent:
    const void* w        # row-major (K, N), or (N, K) when trans: op(W) is (K, N)
    bint trans
    float* packed        # panels of op(W) (float32), or NULL: BLAS
    Py_ssize_t K
    Py_ssize_t N
    int n_threads        # threads splitting the panels


cdef inline Recurrent recurrent(const floating* w, bint trans, Py_ssize_t K, Py_ssize_t N,
                                float* packed, int n_threads) noexcept nogil:
    """Describe op(W) (K, N); ``packed`` (float32 only) holds it packed by
    ``pack``, or is NULL (BLAS multiplies W itself)."""
    cdef Recurrent r
    r.w = w
    r.trans = trans
    r.K = K
    r.N = N
    r.n_threads = n_threads if n_threads > 0 else 1
    r.packed = NULL
    if floating is float:
        r.packed = packed
    return r


cdef inline void pack(const float* w, bint trans, Py_ssize_t K, Py_ssize_t N,
                      float* packed) noexcept nogil:
    """Pack op(W) (K, N) into panels for ``recurrent``: once per call, or once
    for all the parts of a split batch, which then share it."""
    fr_pack_panels(K, N, w, trans, packed)


cdef inline void recurrent_product(const Recurrent* r, Py_ssize_t B, const floating* h,
                                   floating beta, floating* out, Py_ssize_t step) noexcept nogil:
    """out := h @ op(W) + beta * out for h (B, K), out (B, N); beta is 0 or 1.

    ``step``: the time loop's counter. Packed panels are walked in the
    opposite order on odd steps (see fr_gemm_packed), same bits either way."""
    cdef Py_ssize_t n_panels, c
    cdef int nt = r.n_threads
    if floating is float:
        if r.packed != NULL:
            n_panels = fr_n_panels(r.N)
            if nt == 1:
                fr_gemm_packed(B, r.N, r.K, h, r.K, r.packed, beta, out, r.N, 0, n_panels,
                               step & 1)
            else:
                for c in prange(nt, num_threads=nt, schedule="static"):
                    fr_gemm_packed(B, r.N, r.K, h, r.K, r.packed, beta, out, r.N,
                                   n_panels * c // nt, n_panels * (c + 1) // nt, step & 1)
            return
    gemm(False, r.trans, <int> B, <int> r.N, <int> r.K, <floating> 1, h, <int> r.K,
         <const floating*> r.w, <int> (r.K if r.trans else r.N), beta, out, <int> r.N)


cdef inline float* check_packed(float[::1] packed, Py_ssize_t K, Py_ssize_t N,
                                str name="packed", bint float64_call=False) except? NULL:
    """The packed buffer for op(W) (K, N), or NULL; a ValueError naming the
    argument if it is too small, or if it is given to a float64 call
    (``float64_call``) that would not read it."""
    if packed is None:
        return NULL
    if float64_call:
        raise ValueError(f"{name} holds float32 panels, but this call is float64, whose "
                         f"products run through BLAS: pass {name}=None")
    if packed.shape[0] < fr_packed_size(K, N):
        raise ValueError(f"{name} must hold at least {fr_packed_size(K, N)} floats "
                         f"for a ({K}, {N}) matrix, got {packed.shape[0]}")
    return &packed[0]
