/* The backward's weight gradients in register tiles, float32:
 * dw (G, n) := dg^T (G, rows) @ a (rows, n), a sum over all T*B rows.
 *
 * Why not BLAS everywhere: with few output columns (n = I or H of 64-128)
 * OpenBLAS spends much of the product packing dg, which it reads once
 * (sgemm_otcopy was 7% of an LSTM long training call). The tiles read dg and
 * a where they lie: each step of the inner loop broadcasts 8 values of a row
 * of dg and loads 32 of the same row of a, 16 FMAs. Rows go in blocks of
 * FR_WGRAD_ROWS, each block's sums added into dw, so a block of a stays in
 * L1 while the tiles of all of G pass over it. Against OpenBLAS as this
 * build calls it (benchmarks/weight_gradient.c, one core, median of 21):
 * 1.26-1.31x at 4000 rows and n = 64, 1.12-1.14x at 100-200 rows and n =
 * 128, 1.05-1.07x at 800 rows and n = 128; 0.62-0.95x from n = 256, hence
 * the size rule (WGRAD_TILES_MAX_N in fastrnn/_cython_backend.py, applied by
 * weight_gradient in _rnn_common.pxd). Each value sums its rows in order, in
 * blocks: the same bits whichever part of G a thread computes.
 *
 * Only the x86-64-v4 (AVX-512) build has the tiles (FR_WGRAD_TILES); the
 * others call BLAS.
 */
#ifndef FASTRNN_WEIGHT_GRADIENT_H
#define FASTRNN_WEIGHT_GRADIENT_H
#include <stddef.h>

#if defined(__AVX512F__) && defined(__GNUC__)
#define FR_WGRAD_TILES 1
/* 64 rows: 1.00-1.10x of 128 and 1.05-1.26x of 256 in the harness */
#define FR_WGRAD_ROWS 64

typedef float fr_wg16 __attribute__((vector_size(64), aligned(4)));

/* dw[0:8, 0:32] := (first ? 0 : dw) + sum over kr rows k of dg[k, 0:8]^T a[k, 0:32] */
static inline void fr_wgrad_tile(ptrdiff_t kr, const float* dg, ptrdiff_t ldg, const float* a,
                                 ptrdiff_t lda, float* dw, ptrdiff_t ldw, int first)
{
    fr_wg16 s[8][2];
    for (int r = 0; r < 8; r++) {
        s[r][0] = first ? (fr_wg16){0} : *(const fr_wg16*)(dw + r * ldw);
        s[r][1] = first ? (fr_wg16){0} : *(const fr_wg16*)(dw + r * ldw + 16);
    }
    for (ptrdiff_t k = 0; k < kr; k++) {
        fr_wg16 a0 = *(const fr_wg16*)(a + k * lda), a1 = *(const fr_wg16*)(a + k * lda + 16);
        const float* d = dg + k * ldg;
        for (int r = 0; r < 8; r++) {
            s[r][0] += d[r] * a0;
            s[r][1] += d[r] * a1;
        }
    }
    for (int r = 0; r < 8; r++) {
        *(fr_wg16*)(dw + r * ldw) = s[r][0];
        *(fr_wg16*)(dw + r * ldw + 16) = s[r][1];
    }
}

/* dw (G, n), rows ldw apart, := dg^T @ a (``add``: +=); G % 8 == 0, n % 32 == 0,
 * rows > 0 */
static void fr_weight_gradient(ptrdiff_t rows, ptrdiff_t G, ptrdiff_t n, const float* dg,
                               ptrdiff_t ldg, const float* a, ptrdiff_t lda, float* dw,
                               ptrdiff_t ldw, int add)
{
    for (ptrdiff_t k0 = 0; k0 < rows; k0 += FR_WGRAD_ROWS) {
        ptrdiff_t kr = rows - k0 < FR_WGRAD_ROWS ? rows - k0 : FR_WGRAD_ROWS;
        for (ptrdiff_t i0 = 0; i0 < n; i0 += 32)
            for (ptrdiff_t g0 = 0; g0 < G; g0 += 8)
                fr_wgrad_tile(kr, dg + k0 * ldg + g0, ldg, a + k0 * lda + i0, lda,
                              dw + g0 * ldw + i0, ldw, k0 == 0 && !add);
    }
}
#else
#define FR_WGRAD_TILES 0
static inline void fr_weight_gradient(ptrdiff_t rows, ptrdiff_t G, ptrdiff_t n, const float* dg,
                                      ptrdiff_t ldg, const float* a, ptrdiff_t lda, float* dw,
                                      ptrdiff_t ldw, int add)
{
    (void)rows, (void)G, (void)n, (void)dg, (void)ldg, (void)a, (void)lda, (void)dw, (void)ldw;
    (void)add;
}
#endif
#endif
