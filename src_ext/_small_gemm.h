/* A few rows times PyTorch's weight layout, float32:
 * C[m][n] (+)= sum_k A[m][k] * W[n][k] for a few rows M, W (N, K) row-major.
 *
 * Why not BLAS: a call too short to repay packing W into panels
 * (_packed_gemm.h) multiplied a few rows by W through BLAS. OpenBLAS's GEMM
 * repacks all of W on every call, so those rows went one by one through its
 * GEMV (src_ext/_blas.pxd), which streams all of W once per row: B times
 * per product. Here W streams once for all the rows: each block of W's rows
 * is dotted with every row of A while it is in L1.
 *
 * Each sum runs along k in 8 lanes (k mod 8), the last chunk zero-padded,
 * reduced in a fixed tree, ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)):
 * the bits depend on K only, never on M, the block or the thread.
 */
#ifndef FASTRNN_SMALL_GEMM_H
#define FASTRNN_SMALL_GEMM_H
#include <stddef.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif


/* a block: ROWS rows of A (a, lda) against NB rows of W (w, ldw), into C's
 * NB columns at c (ldc) */
#define FR_NT_SIGNATURE(ROWS, NB)                                                      \
    static inline void fr_nt_block_##ROWS##x##NB(ptrdiff_t K, const float* a,           \
                                                 ptrdiff_t lda, const float* w,         \
                                                 ptrdiff_t ldw, float beta, float* c,   \
                                                 ptrdiff_t ldc)

/* C's element := its sum t, or t added to it (beta 1) */
static inline void fr_nt_store(float* out, float t, float beta)
{
    *out = beta == 0.0f ? t : *out + t;
}

#if defined(__GNUC__)
typedef float fr_nt_v8 __attribute__((vector_size(32), aligned(4)));

/* the 8 lanes' sum, ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)) */
static inline float fr_nt_sum8(const fr_nt_v8* v)
{
#if defined(__AVX__)
    __m256 x;
    memcpy(&x, v, sizeof x);
    x = _mm256_hadd_ps(x, x);
    x = _mm256_hadd_ps(x, x);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1)));
#else
    const float* l = (const float*)v;
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
#endif
}

/* out[0:4] := the sums of v[0:4] (fr_nt_sum8's tree for each), or added to
 * out (beta 1). Three horizontal adds reduce four sums at once: one sum at a
 * time, the reductions took 10-15% of a 4 x 4 block's time at K = 128-512
 * (benchmarks/small_gemm.c). */
static inline void fr_nt_store4(float* out, const fr_nt_v8* v, float beta)
{
#if defined(__AVX__)
    __m256 a, b, c, d;
    memcpy(&a, v, sizeof a);
    memcpy(&b, v + 1, sizeof b);
    memcpy(&c, v + 2, sizeof c);
    memcpy(&d, v + 3, sizeof d);
    __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
    if (beta != 0.0f)
        t = _mm_add_ps(_mm_loadu_ps(out), t);
    _mm_storeu_ps(out, t);
#else
    for (int q = 0; q < 4; q++) fr_nt_store(out + q, fr_nt_sum8(v + q), beta);
#endif
}

/* the last n < 8 values at x, zero-padded: the last chunk of every sum, so
 * that its terms take the same lanes and FMAs in every block (a scalar loop
 * over them was vectorised in some blocks and not others, rounding the
 * products apart from their sums there) */
static inline void fr_nt_tail(const float* x, ptrdiff_t n, fr_nt_v8* v)
{
#if defined(__AVX2__)
    /* a masked load: around a call to memcpy here GCC kept every sum of the
     * block on the stack, which took 1.4-2.1x the time at K = 100 */
    __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 t = _mm256_maskload_ps(x, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lane));
    memcpy(v, &t, sizeof *v);
#else
    float lanes[8] = {0};
    memcpy(lanes, x, n * sizeof(float));
    memcpy(v, lanes, sizeof *v);
#endif
}

/* ROWS rows of A against NB rows of W (w, ldw), into C's NB columns at c:
 * ROWS * NB independent sums in registers. */
#define FR_NT_BLOCK(ROWS, NB)                                                          \
    FR_NT_SIGNATURE(ROWS, NB)                                                          \
    {                                                                                  \
        fr_nt_v8 s[ROWS][NB];                                                          \
        for (int r = 0; r < ROWS; r++)                                                 \
            for (int q = 0; q < NB; q++) s[r][q] = (fr_nt_v8){0};                      \
        ptrdiff_t k = 0;                                                               \
        for (; k + 8 <= K; k += 8) {                                                   \
            fr_nt_v8 wv[NB];                                                           \
            for (int q = 0; q < NB; q++) wv[q] = *(const fr_nt_v8*)(w + q * ldw + k);  \
            for (int r = 0; r < ROWS; r++) {                                           \
                fr_nt_v8 av = *(const fr_nt_v8*)(a + r * lda + k);                     \
                for (int q = 0; q < NB; q++) s[r][q] += av * wv[q];                    \
            }                                                                          \
        }                                                                              \
        if (k < K) {                                                                   \
            fr_nt_v8 wv[NB];                                                           \
            for (int q = 0; q < NB; q++) fr_nt_tail(w + q * ldw + k, K - k, &wv[q]);   \
            for (int r = 0; r < ROWS; r++) {                                           \
                fr_nt_v8 av;                                                           \
                fr_nt_tail(a + r * lda + k, K - k, &av);                               \
                for (int q = 0; q < NB; q++) s[r][q] += av * wv[q];                    \
            }                                                                          \
        }                                                                              \
        for (int r = 0; r < ROWS; r++) {                                               \
            if (NB % 4 == 0)                                                           \
                for (int q = 0; q < NB; q += 4) fr_nt_store4(c + r * ldc + q, &s[r][q], beta); \
            else                                                                       \
                for (int q = 0; q < NB; q++)                                           \
                    fr_nt_store(c + r * ldc + q, fr_nt_sum8(&s[r][q]), beta);          \
        }                                                                              \
    }
#else
#define FR_NT_BLOCK(ROWS, NB)                                                          \
    FR_NT_SIGNATURE(ROWS, NB)                                                          \
    {                                                                                  \
        for (int r = 0; r < ROWS; r++)                                                 \
            for (int q = 0; q < NB; q++) {                                             \
                float lane[8] = {0};                                                   \
                for (ptrdiff_t k = 0; k < K; k++)                                      \
                    lane[k % 8] += a[r * lda + k] * w[q * ldw + k];                    \
                float t = ((lane[0] + lane[1]) + (lane[2] + lane[3]))                  \
                        + ((lane[4] + lane[5]) + (lane[6] + lane[7]));                 \
                fr_nt_store(c + r * ldc + q, t, beta);                                 \
            }                                                                          \
    }
#endif

FR_NT_BLOCK(1, 8)
FR_NT_BLOCK(2, 8)
FR_NT_BLOCK(1, 4)
FR_NT_BLOCK(1, 1)
FR_NT_BLOCK(2, 4)
FR_NT_BLOCK(2, 1)
FR_NT_BLOCK(3, 4)
FR_NT_BLOCK(3, 1)
FR_NT_BLOCK(4, 4)
FR_NT_BLOCK(4, 1)

/* rows [0, M) of A against NB rows of W, four rows of A at a time: the W
 * rows stay in L1 from one group of four to the next. (One block of 8 rows
 * by 2 W rows, as many sums, ran at half the speed of two 4 x 4.) */
#define FR_NT_GROUPS(NB)                                                               \
    static inline void fr_nt_groups_##NB(ptrdiff_t M, ptrdiff_t K, const float* a,      \
                                         ptrdiff_t lda, const float* w, ptrdiff_t ldw,  \
                                         float beta, float* c, ptrdiff_t ldc)           \
    {                                                                                  \
        for (ptrdiff_t r = 0; r < M; r += 4) {                                         \
            const float* ar = a + r * lda;                                             \
            float* cr = c + r * ldc;                                                   \
            switch (M - r) {                                                           \
            case 1: fr_nt_block_1x##NB(K, ar, lda, w, ldw, beta, cr, ldc); break;      \
            case 2: fr_nt_block_2x##NB(K, ar, lda, w, ldw, beta, cr, ldc); break;      \
            case 3: fr_nt_block_3x##NB(K, ar, lda, w, ldw, beta, cr, ldc); break;      \
            default: fr_nt_block_4x##NB(K, ar, lda, w, ldw, beta, cr, ldc); break;     \
            }                                                                          \
        }                                                                              \
    }
FR_NT_GROUPS(4)
FR_NT_GROUPS(1)

/* C (M, N) := A (M, K) @ W^T + beta * C for W (N, K), beta 0 or 1 (with 0, C
 * is not read), M >= 1: W's rows four at a time (eight for one or two rows
 * of A, whose four or eight sums alone would wait on the FMAs' latency). */
static void fr_gemm_nt(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* A, ptrdiff_t lda,
                       const float* W, ptrdiff_t ldw, float beta, float* C, ptrdiff_t ldc)
{
    ptrdiff_t n = 0;
    if (M <= 2)
        for (; n + 8 <= N; n += 8)
            (M == 1 ? fr_nt_block_1x8 : fr_nt_block_2x8)(K, A, lda, W + n * ldw, ldw, beta,
                                                           C + n, ldc);
    for (; n + 4 <= N; n += 4)
        fr_nt_groups_4(M, K, A, lda, W + n * ldw, ldw, beta, C + n, ldc);
    for (; n < N; n++)
        fr_nt_groups_1(M, K, A, lda, W + n * ldw, ldw, beta, C + n, ldc);
}
#endif
