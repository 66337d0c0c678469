/* Small-batch recurrent product for float32: C[B, N] += A[B, K] @ W[K, N].
 *
 * Why not BLAS: each step multiplies a few rows of h by the same W_hh, and
 * OpenBLAS repacks all of W_hh on every call (sgemm_itcopy dominated the
 * profile at B <= 16). Here W is packed once per call into column panels
 * of FR_PANEL floats, each panel K x FR_PANEL contiguous, so every step streams
 * W exactly once, in order, and each W vector feeds 4 rows of A.
 *
 * Panels are independent, so threads split them (fr_gemm_packed takes a panel
 * range). The x86-64-v3 (AVX2 + FMA) clone is chosen at load time where the
 * compiler and the C library support it; elsewhere the generic build runs.
 * The x86-64-v4 build of the kernel modules (setup.py) compiles the AVX-512
 * row blocks instead: the same panels, twice the FMA width.
 */
#ifndef FASTRNN_PACKED_GEMM_H
#define FASTRNN_PACKED_GEMM_H
#include <stddef.h>
#include <string.h>
#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

#define FR_PANEL 16

/* A build for x86-64-v4 (AVX-512) has its own row blocks below; a clone for
 * x86-64-v3 would be picked there too and run them two halves at a time. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(__AVX512F__)
#define FR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FR_CLONES
#endif

#if defined(__GNUC__)
typedef float fr_v8 __attribute__((vector_size(32), aligned(4)));
#define FR_VECTOR_EXT 1
#endif

static inline ptrdiff_t fr_n_panels(ptrdiff_t N) { return (N + FR_PANEL - 1) / FR_PANEL; }

/* Size in floats of the packed copy of a (K, N) matrix. */
static inline ptrdiff_t fr_packed_size(ptrdiff_t K, ptrdiff_t N) { return fr_n_panels(N) * K * FR_PANEL; }

/* packed[p][k][j] = W(k, p*FR_PANEL + j), zero past column N, where W(k, n)
 * is w[k * k_stride + n * n_stride]: (1, K) strides pack W^T of a row-major
 * (N, K) array, i.e. PyTorch's weight layout, without a transposed copy. */
static inline void fr_pack_one(ptrdiff_t K, ptrdiff_t N, const float* w, ptrdiff_t k_stride,
                               ptrdiff_t n_stride, float* packed, ptrdiff_t p, ptrdiff_t k)
{
    for (ptrdiff_t j = 0; j < FR_PANEL; j++) {
        ptrdiff_t n = p * FR_PANEL + j;
        packed[(p * K + k) * FR_PANEL + j] = n < N ? w[k * k_stride + n * n_stride] : 0.0f;
    }
}

/* Rows of W (n_stride 1): each (k, panel) is FR_PANEL contiguous floats, a
 * fixed-size memcpy (vector moves). Blocks of FR_PACK_ROWS rows of W go panel
 * by panel: writing one row of W at a time to every panel, K * 64 bytes
 * apart, hits the same few L1 sets again and again. */
#define FR_PACK_ROWS 8
static void fr_pack_rows(ptrdiff_t K, ptrdiff_t N, const float* w, ptrdiff_t k_stride,
                         float* packed, ptrdiff_t p0, ptrdiff_t p1)
{
    ptrdiff_t full = N / FR_PANEL < p1 ? N / FR_PANEL : p1;
    for (ptrdiff_t k0 = 0; k0 < K; k0 += FR_PACK_ROWS) {
        ptrdiff_t k1 = k0 + FR_PACK_ROWS < K ? k0 + FR_PACK_ROWS : K;
        for (ptrdiff_t p = p0; p < full; p++)
            for (ptrdiff_t k = k0; k < k1; k++)
                memcpy(packed + (p * K + k) * FR_PANEL, w + k * k_stride + p * FR_PANEL,
                       FR_PANEL * sizeof(float));
        if (full < p1 && full >= p0)
            for (ptrdiff_t k = k0; k < k1; k++)
                fr_pack_one(K, N, w, k_stride, 1, packed, full, k);
    }
}

/* Columns of W (k_stride 1, PyTorch's layout read as W^T): a panel is
 * FR_PANEL rows of w, transposed, 4 x 4 blocks at a time through SSE
 * registers (every x86-64 has SSE; elsewhere the scalar loop does it all). */
static void fr_pack_columns(ptrdiff_t K, ptrdiff_t N, const float* w, ptrdiff_t n_stride,
                            float* packed, ptrdiff_t p0, ptrdiff_t p1)
{
    for (ptrdiff_t p = p0; p < p1; p++) {
        ptrdiff_t k = 0;
#if defined(__SSE__) || defined(_M_X64)
        if ((p + 1) * FR_PANEL <= N) {
            for (; k + 4 <= K; k += 4)
                for (int j = 0; j < FR_PANEL; j += 4) {
                    const float* src = w + (p * FR_PANEL + j) * n_stride + k;
                    __m128 r0 = _mm_loadu_ps(src), r1 = _mm_loadu_ps(src + n_stride);
                    __m128 r2 = _mm_loadu_ps(src + 2 * n_stride);
                    __m128 r3 = _mm_loadu_ps(src + 3 * n_stride);
                    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
                    float* dst = packed + (p * K + k) * FR_PANEL + j;
                    _mm_storeu_ps(dst, r0);
                    _mm_storeu_ps(dst + FR_PANEL, r1);
                    _mm_storeu_ps(dst + 2 * FR_PANEL, r2);
                    _mm_storeu_ps(dst + 3 * FR_PANEL, r3);
                }
        }
#endif
        for (; k < K; k++)
            fr_pack_one(K, N, w, 1, n_stride, packed, p, k);
    }
}

/* Pack panels [p0, p1) of op(W) (K, N), from a row-major w: (N, K) with
 * op(W) = w^T when ``trans`` (PyTorch's layout, the forward's W_hh^T), else
 * (K, N) (the backward's W_hh). Panels are independent, so the threads that
 * will read a range of them can pack it themselves (src_ext/_units.pxd).
 * Against one element at a time, 2.3-3.9x and 1.8-3.6x
 * faster for the grid's W_hh (LSTM at H = 128: 46 -> 14 us and 31 -> 12 us;
 * H = 512: 818 -> 291 us and 979 -> 362 us; C harness, the two interleaved,
 * median of 41), with the same bytes. */
static void fr_pack_panel_range(ptrdiff_t K, ptrdiff_t N, const float* w, int trans,
                                float* packed, ptrdiff_t p0, ptrdiff_t p1)
{
    if (trans)
        fr_pack_columns(K, N, w, K, packed, p0, p1);
    else
        fr_pack_rows(K, N, w, N, packed, p0, p1);
}

/* All of op(W)'s panels. */
static void fr_pack_panels(ptrdiff_t K, ptrdiff_t N, const float* w, int trans, float* packed)
{
    fr_pack_panel_range(K, N, w, trans, packed, 0, fr_n_panels(N));
}

/* c[r][0:FR_PANEL] += sum_k a[r][k] * w[k][0:FR_PANEL] for ROWS rows of a; w one packed panel.
 *
 * k is unrolled by FR_UNROLL with the W vectors of all FR_UNROLL steps loaded
 * before their FMAs: more loads in flight while W streams from L2/L3, and a
 * quarter of the loop overhead. Each sum still adds its k in order, so the
 * results are bit-identical to the plain loop. Against it (C harness, one
 * core, the two alternating, median of 15, the grid's half-batch shapes
 * B = 4-32, K = 64-512, N = 256-2048): 1.07-1.15x on one core alone,
 * 1.02-1.10x with both cores running it. (LLVM unrolls the Numba version of
 * this loop by 2 on its own; GCC does not.) */
#define FR_UNROLL 4
#define FR_PANEL_ROWS(ROWS)                                                           \
    static inline void fr_panel_rows_##ROWS(ptrdiff_t K, const float* a, ptrdiff_t lda,\
                                            const float* w, float* acc)               \
    {                                                                                 \
        fr_v8 lo[ROWS], hi[ROWS];                                                     \
        for (int r = 0; r < ROWS; r++) { lo[r] = (fr_v8){0}; hi[r] = (fr_v8){0}; }    \
        ptrdiff_t k = 0;                                                              \
        for (; k + FR_UNROLL <= K; k += FR_UNROLL) {                                  \
            fr_v8 wv[2 * FR_UNROLL];                                                  \
            for (int u = 0; u < 2 * FR_UNROLL; u++)                                   \
                wv[u] = *(const fr_v8*)(w + k * FR_PANEL + 8 * u);                    \
            for (int u = 0; u < FR_UNROLL; u++)                                       \
                for (int r = 0; r < ROWS; r++) {                                      \
                    float s = a[r * lda + k + u];                                     \
                    lo[r] += s * wv[2 * u];                                           \
                    hi[r] += s * wv[2 * u + 1];                                       \
                }                                                                     \
        }                                                                             \
        for (; k < K; k++) {                                                          \
            fr_v8 w0 = *(const fr_v8*)(w + k * FR_PANEL);                             \
            fr_v8 w1 = *(const fr_v8*)(w + k * FR_PANEL + 8);                         \
            for (int r = 0; r < ROWS; r++) {                                          \
                float s = a[r * lda + k];                                             \
                lo[r] += s * w0;                                                      \
                hi[r] += s * w1;                                                      \
            }                                                                         \
        }                                                                             \
        for (int r = 0; r < ROWS; r++) {                                              \
            *(fr_v8*)(acc + r * FR_PANEL) = lo[r];                                    \
            *(fr_v8*)(acc + r * FR_PANEL + 8) = hi[r];                                \
        }                                                                             \
    }

#if !defined(__AVX512F__) || !defined(FR_VECTOR_EXT)
/* One row: the same product, but FMA latency (4-5 cycles) would leave two
 * accumulators waiting on each other, so four interleaved partial sums over k
 * keep eight FMAs in flight; they are added in a fixed order at the end. */
static inline void fr_panel_rows_1(ptrdiff_t K, const float* a, ptrdiff_t lda,
                                   const float* w, float* acc)
{
    (void)lda;
    fr_v8 lo[4] = {{0}}, hi[4] = {{0}};
    ptrdiff_t k = 0;
    for (; k + 4 <= K; k += 4)
        for (int u = 0; u < 4; u++) {
            fr_v8 w0 = *(const fr_v8*)(w + (k + u) * FR_PANEL);
            fr_v8 w1 = *(const fr_v8*)(w + (k + u) * FR_PANEL + 8);
            lo[u] += a[k + u] * w0;
            hi[u] += a[k + u] * w1;
        }
    for (; k < K; k++) {
        lo[0] += a[k] * *(const fr_v8*)(w + k * FR_PANEL);
        hi[0] += a[k] * *(const fr_v8*)(w + k * FR_PANEL + 8);
    }
    *(fr_v8*)acc = (lo[0] + lo[1]) + (lo[2] + lo[3]);
    *(fr_v8*)(acc + 8) = (hi[0] + hi[1]) + (hi[2] + hi[3]);
}
#endif

#if defined(__AVX512F__) && defined(FR_VECTOR_EXT)
/* AVX-512 (the x86-64-v4 build): a panel row is one 16-float register. A
 * block multiplies ROWS rows by NP panels side by side (two W streams, each
 * A value broadcast once for both): 8 x 2 keeps 16 sums in registers and
 * loads 10 values per 16 FMAs, where one panel at a time (8 x 1) loaded 9
 * per 8. Fewer rows keep enough FMA chains in flight (two FMA units, four
 * cycles each) with SUMS partial sums over k: sum u takes the k with
 * k % SUMS == u, added in a fixed order at the end. SUMS depends on ROWS
 * only, so a column's bits do not depend on whether its panel ran paired.
 * Against 8 x 1 blocks (C harness, one core, median of 31, the grid's
 * half-batch products): 1.02-1.18x. */
typedef float fr_v16 __attribute__((vector_size(64), aligned(4)));
#define FR_MAX_ROWS 8
#define FR_STEP_PANELS 2

#define FR_V4_BLOCK(ROWS, NP, SUMS)                                                   \
    static inline void fr_block_##ROWS##x##NP(ptrdiff_t K, const float* a, ptrdiff_t lda,\
                                              const float* w, ptrdiff_t pstride,      \
                                              float* acc)                             \
    {                                                                                 \
        fr_v16 s[SUMS][ROWS][NP];                                                     \
        for (int u = 0; u < SUMS; u++)                                                \
            for (int r = 0; r < ROWS; r++)                                            \
                for (int q = 0; q < NP; q++) s[u][r][q] = (fr_v16){0};                \
        ptrdiff_t k = 0;                                                              \
        for (; k + SUMS <= K; k += SUMS) {                                            \
            fr_v16 wv[SUMS][NP];                                                      \
            for (int u = 0; u < SUMS; u++)                                            \
                for (int q = 0; q < NP; q++)                                          \
                    wv[u][q] = *(const fr_v16*)(w + q * pstride + (k + u) * FR_PANEL);\
            for (int u = 0; u < SUMS; u++)                                            \
                for (int r = 0; r < ROWS; r++) {                                      \
                    float x = a[r * lda + k + u];                                     \
                    for (int q = 0; q < NP; q++) s[u][r][q] += x * wv[u][q];          \
                }                                                                     \
        }                                                                             \
        for (; k < K; k++)                                                            \
            for (int r = 0; r < ROWS; r++) {                                          \
                float x = a[r * lda + k];                                             \
                for (int q = 0; q < NP; q++)                                          \
                    s[0][r][q] += x * *(const fr_v16*)(w + q * pstride + k * FR_PANEL);\
            }                                                                         \
        for (int r = 0; r < ROWS; r++)                                                \
            for (int q = 0; q < NP; q++) {                                            \
                fr_v16 t = s[0][r][q];                                                \
                for (int u = 1; u < SUMS; u++) t += s[u][r][q];                       \
                *(fr_v16*)(acc + (r * NP + q) * FR_PANEL) = t;                        \
            }                                                                         \
    }
FR_V4_BLOCK(8, 2, 1)
FR_V4_BLOCK(8, 1, 1)
FR_V4_BLOCK(4, 2, 2)
FR_V4_BLOCK(4, 1, 2)
/* one row: 8 sums over k measured 0.95-1.06x of 2 or 4 at B = 1-3 */
FR_V4_BLOCK(1, 2, 8)
FR_V4_BLOCK(1, 1, 8)

/* acc (rows x np*FR_PANEL) := A[rows] @ the np panels at w */
static inline void fr_block(int rows, int np, ptrdiff_t K, const float* a, ptrdiff_t lda,
                            const float* w, float* acc)
{
    ptrdiff_t ps = K * FR_PANEL;
    if (rows == 8)
        np == 2 ? fr_block_8x2(K, a, lda, w, ps, acc) : fr_block_8x1(K, a, lda, w, ps, acc);
    else if (rows == 4)
        np == 2 ? fr_block_4x2(K, a, lda, w, ps, acc) : fr_block_4x1(K, a, lda, w, ps, acc);
    else
        np == 2 ? fr_block_1x2(K, a, lda, w, ps, acc) : fr_block_1x1(K, a, lda, w, ps, acc);
}
#else
#define FR_MAX_ROWS 4
#define FR_STEP_PANELS 1
FR_PANEL_ROWS(4)

static inline void fr_block(int rows, int np, ptrdiff_t K, const float* a, ptrdiff_t lda,
                            const float* w, float* acc)
{
    (void)np;
    if (rows == 4)
        fr_panel_rows_4(K, a, lda, w, acc);
    else
        fr_panel_rows_1(K, a, lda, w, acc);
}
#endif

/* C[:, panels p0..p1) := A @ W + bias (beta unused), or without a bias
 * C (+)= A @ W, beta 0 or 1. The bias rides in the final store, bias + sum:
 * no pass of its own over C, and the bits of a bias pass followed by beta 1. */
FR_CLONES
static void fr_gemm_packed_bias(ptrdiff_t B, ptrdiff_t N, ptrdiff_t K, const float* A,
                                ptrdiff_t lda, const float* packed, float beta, float* C,
                                ptrdiff_t ldc, ptrdiff_t p0, ptrdiff_t p1, int descending,
                                const float* bias)
{
    float acc[FR_MAX_ROWS * FR_STEP_PANELS * FR_PANEL];
    for (ptrdiff_t done = 0; done < p1 - p0;) {
        int np = p1 - p0 - done >= FR_STEP_PANELS ? FR_STEP_PANELS : 1;
        ptrdiff_t p = descending ? p1 - done - np : p0 + done;
        const float* w = packed + p * K * FR_PANEL;
        ptrdiff_t n0 = p * FR_PANEL, cols = np * FR_PANEL;
        ptrdiff_t width = N - n0 < cols ? N - n0 : cols;
        for (ptrdiff_t b = 0; b < B;) {
            int rows = B - b >= FR_MAX_ROWS ? FR_MAX_ROWS : B - b >= 4 ? 4 : 1;
            fr_block(rows, np, K, A + b * lda, lda, w, acc);
            for (int r = 0; r < rows; r++) {
                float* c = C + (b + r) * ldc + n0;
                const float* s = acc + r * cols;
                if (bias != NULL)
                    for (ptrdiff_t j = 0; j < width; j++)
                        c[j] = bias[n0 + j] + s[j];
                else if (beta == 0.0f)
                    for (ptrdiff_t j = 0; j < width; j++)
                        c[j] = s[j];
                else
                    for (ptrdiff_t j = 0; j < width; j++)
                        c[j] += s[j];
            }
            b += rows;
        }
        done += np;
    }
}

/* C[:, panels p0..p1) (+)= A @ W for packed W; beta is 0 or 1.
 *
 * ``descending`` walks the panels from p1 down. The time loops alternate
 * it step by step, so each step first reads the panels the last one read
 * last, which are still in the caches: the share of W that fits stays there
 * instead of being evicted, in LRU order, just before it is needed. A
 * column's sums do not depend on the order or the pairing of the panels,
 * so the bits do not change. */
static inline void fr_gemm_packed(ptrdiff_t B, ptrdiff_t N, ptrdiff_t K, const float* A,
                                  ptrdiff_t lda, const float* packed, float beta, float* C,
                                  ptrdiff_t ldc, ptrdiff_t p0, ptrdiff_t p1, int descending)
{
    fr_gemm_packed_bias(B, N, K, A, lda, packed, beta, C, ldc, p0, p1, descending, NULL);
}
#endif
