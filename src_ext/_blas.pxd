# cython: language_level=3
"""Row-major BLAS wrappers over SciPy's ``cython_blas`` (no link-time BLAS).

BLAS is column-major; a row-major C = op(A) @ op(B) is the column-major
C^T = op(B)^T @ op(A)^T, so the operands are passed swapped.
"""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C := alpha * op(A) @ op(B) + beta * C, row-major; op(A) (m, k), op(B) (k, n)."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef Py_ssize_t i
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        # BLAS rejects lda = 0; with no inner dimension C is only scaled
        for i in range(m):
            scale_row(c + i * ldc, n, beta)
        return
    if m == 1:
        # a single row: GEMM would repack all of op(B) for one product
        if trans_b:
            gemv(False, n, k, alpha, b, ldb, a, lda if trans_a else 1, beta, c)
        else:
            gemv(True, k, n, alpha, b, ldb, a, lda if trans_a else 1, beta, c)
        return
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> b, &ldb, <float*> a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*> b, &ldb, <double*> a, &lda,
              &beta, c, &ldc)


cdef inline void scale_row(floating* x, Py_ssize_t n, floating beta) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        x[j] = 0 if beta == 0 else beta * x[j]


cdef inline void gemv(bint trans, int m, int n, floating alpha, const floating* a, int lda,
                      const floating* x, int incx, floating beta, floating* y) noexcept nogil:
    """y := alpha * op(A) @ x + beta * y for row-major A (m, n); op(A) = A^T if trans."""
    # row-major A is column-major A^T: swap the trans flag and the dimensions
    cdef char t = b'N' if trans else b'T'
    cdef int one = 1
    if floating is float:
        sgemv(&t, &n, &m, &alpha, <float*> a, &lda, <float*> x, &incx, &beta, y, &one)
    else:
        dgemv(&t, &n, &m, &alpha, <double*> a, &lda, <double*> x, &incx, &beta, y, &one)
