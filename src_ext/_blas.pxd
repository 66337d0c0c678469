# cython: language_level=3
"""Row-major BLAS wrappers over SciPy's ``cython_blas`` (no link-time BLAS).

BLAS is column-major; a row-major C = op(A) @ op(B) is the column-major
C^T = op(B)^T @ op(A)^T, so the operands are passed swapped.
"""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv

cdef extern from "_small_gemm.h" nogil:
    void fr_gemm_nt(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                    const float* W, Py_ssize_t ldw, float beta, float* C, Py_ssize_t ldc)

#: products with at most this many rows go row by row through GEMV. OpenBLAS's
#: GEMM repacks all of op(B) on every call, which dominates a product of a few
#: rows: in C, one thread, median of 41, a loop of SGEMV over the rows against
#: one SGEMM, for the grid's weight shapes (PyTorch's layout, op(B) = W^T):
#: 8.6-10.9x faster at 1 row, 4.2-5.3x at 2, 2.1-2.6x at 4, 1.2-1.6x at 8, and
#: 0.78-0.90x at 16.
#: float32 times W^T with at most NT_MAX_ROWS rows streams W once for all of
#: them instead (src_ext/_small_gemm.h). One core, medians of 15 alternating
#: runs (benchmarks/small_gemm.c, AMD EPYC Zen 4, x86-64-v4 build; W of
#: (128..2048, 64..512)): against the SGEMV loop 1.01-1.22x at 1 row,
#: 1.36-1.64x at 2, 1.63-2.14x at 4, 1.62-2.28x at 8; against one SGEMM
#: 2.0-2.6x at 8 rows, 1.3-1.8x at 16 and 1.0-1.4x at 32.
cdef enum:
    GEMV_MAX_ROWS = 8
    NT_MAX_ROWS = 32


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
    if floating is float:
        if m <= NT_MAX_ROWS and trans_b and not trans_a and alpha == 1 \
                and (beta == 0 or beta == 1):
            # float32 times B^T (a weight in PyTorch's layout): B streams once
            # for all the rows (src_ext/_small_gemm.h)
            fr_gemm_nt(m, n, k, a, lda, b, ldb, beta, c, ldc)
            return
    if m <= GEMV_MAX_ROWS:
        # a few rows: GEMM would repack all of op(B) for them, so stream op(B)
        # once per row instead (row i of op(A) is a column of A if trans_a)
        for i in range(m):
            if trans_b:
                gemv(False, n, k, alpha, b, ldb, a + (i if trans_a else i * lda),
                     lda if trans_a else 1, beta, c + i * ldc)
            else:
                gemv(True, k, n, alpha, b, ldb, a + (i if trans_a else i * lda),
                     lda if trans_a else 1, beta, c + i * ldc)
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
