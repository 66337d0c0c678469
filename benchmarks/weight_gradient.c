/* Could register tiles beat OpenBLAS at the backward's weight gradients?
 *
 * After its time loop a backward computes dW_ih = dG^T @ x and dW_hh =
 * dG^T @ h (``weight_gradient`` in src_ext/_rnn_common.pxd): a sum over all
 * T*B rows, with few output columns (I or H) at the grid's long and latency
 * shapes. perf of LSTM long training put OpenBLAS's packing of dG
 * (sgemm_otcopy) at 7% of the call. This times, on one core, the three
 * alternating, median of 21 rounds, GFLOP/s:
 *   - OpenBLAS as the x86-64-v4 build calls it (dw^T = a^T-major product);
 *   - OpenBLAS as the other builds do from 2048 rows (dw_t = a^T @ dg, then a
 *     transpose);
 *   - the register tiles of src_ext/_weight_gradient.h (``fr_weight_gradient``:
 *     8 x 32 tiles of dW over blocks of FR_WGRAD_ROWS rows, reading dG and the
 *     inputs where they lie, no packing), which the x86-64-v4 build uses up to
 *     ``_cython_backend.WGRAD_TILES_MAX_N`` columns;
 * and checks the tiles against OpenBLAS.
 *
 * Build and run from the repository root (the tiles need AVX-512, G % 8 == 0
 * and n % 32 == 0, as the shapes below have):
 *   gcc -O3 -march=x86-64-v4 -I src_ext benchmarks/weight_gradient.c -o /tmp/weight_gradient -ldl -lm
 *   OPENBLAS=$(python -c "import scipy, glob, os; print(glob.glob(os.path.join(os.path.dirname(scipy.__file__), '..', 'scipy.libs', 'libscipy_openblas*.so'))[0])")
 *   taskset -c 0 /tmp/weight_gradient "$OPENBLAS"
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "_weight_gradient.h"
#include "harness.h"
#include "openblas.h"

#if !FR_WGRAD_TILES
#error "the register tiles need an AVX-512 build: -march=x86-64-v4"
#endif

#define ROUNDS 21

static sgemm_t sgemm;

static void wgrad_tiles(ptrdiff_t rows, ptrdiff_t G, ptrdiff_t n, const float* dg,
                        const float* a, float* dw)
{
    fr_weight_gradient(rows, G, n, dg, G, a, n, dw, n, 0);
}

/* OpenBLAS as the x86-64-v4 build calls it: row-major dw (G, n) = dg^T @ a
 * is column-major dw^T (n, G) = a_cm (n, rows) @ dg_cm^T */
static void wgrad_blas(ptrdiff_t rows, ptrdiff_t G, ptrdiff_t n, const float* dg,
                       const float* a, float* dw)
{
    float one = 1, zero = 0;
    int m_ = (int)G, n_ = (int)n, k_ = (int)rows, ldg = (int)G, lda = (int)n;
    sgemm("N", "T", &n_, &m_, &k_, &one, a, &lda, dg, &ldg, &zero, dw, &n_);
}

/* as the other builds do from 2048 rows: dw_t (n, G) = a^T @ dg, then a
 * transpose in blocks of 16 rows of dw */
static void wgrad_blas_t(ptrdiff_t rows, ptrdiff_t G, ptrdiff_t n, const float* dg,
                         const float* a, float* dw, float* dw_t)
{
    float one = 1, zero = 0;
    int m_ = (int)G, n_ = (int)n, k_ = (int)rows, ldg = (int)G, lda = (int)n;
    sgemm("N", "T", &m_, &n_, &k_, &one, dg, &ldg, a, &lda, &zero, dw_t, &m_);
    for (ptrdiff_t i0 = 0; i0 < G; i0 += 16)
        for (ptrdiff_t j = 0; j < n; j++)
            for (ptrdiff_t i = i0; i < i0 + 16 && i < G; i++)
                dw[i * n + j] = dw_t[j * G + i];
}

static void measure(const char* what, ptrdiff_t rows, ptrdiff_t G, ptrdiff_t n)
{
    float* dg = aligned_alloc(64, rows * G * sizeof(float));
    float* a = aligned_alloc(64, rows * n * sizeof(float));
    float* dw = aligned_alloc(64, G * n * sizeof(float));
    float* ref = aligned_alloc(64, G * n * sizeof(float));
    float* dw_t = aligned_alloc(64, G * n * sizeof(float));
    for (ptrdiff_t i = 0; i < rows * G; i++)
        dg[i] = 0.01f * (float)(i % 13) - 0.06f;
    for (ptrdiff_t i = 0; i < rows * n; i++)
        a[i] = 0.02f * (float)(i % 7) - 0.05f;
    wgrad_blas(rows, G, n, dg, a, ref);
    wgrad_tiles(rows, G, n, dg, a, dw);
    double err = 0;
    for (ptrdiff_t i = 0; i < G * n; i++)
        err = fmax(err, fabs(dw[i] - ref[i]));
    int calls = (int)(3e8 / (2.0 * rows * G * n)) + 1;     /* ~1-2 ms a turn */
    double t[3][ROUNDS];
    for (int r = 0; r < ROUNDS; r++)
        for (int v0 = 0; v0 < 3; v0++) {
            int v = (v0 + r) % 3;                           /* each goes first in turn */
            double t0 = now();
            for (int c = 0; c < calls; c++) {
                if (v == 0)
                    wgrad_blas(rows, G, n, dg, a, dw);
                else if (v == 1)
                    wgrad_blas_t(rows, G, n, dg, a, dw, dw_t);
                else
                    wgrad_tiles(rows, G, n, dg, a, dw);
            }
            t[v][r] = (now() - t0) / calls;
        }
    double flop = 2.0 * rows * G * n, g[3];
    for (int v = 0; v < 3; v++) {
        qsort(t[v], ROUNDS, sizeof(double), by_value);
        g[v] = flop / t[v][ROUNDS / 2] / 1e9;
    }
    printf("| %s | %td x %td x %td | %.1f | %.1f | %.1f | %.2f | %.1e |\n", what, rows, G, n,
           g[0], g[1], g[2], g[2] / g[0], err);
    free(dg), free(a), free(dw), free(ref), free(dw_t);
}

int main(int argc, char** argv)
{
    sgemm = openblas_sgemm(argc, argv);
    printf("| weight gradient | rows x G x n | OpenBLAS (v4) | OpenBLAS transposed | tiles "
           "| tiles / OpenBLAS (v4) | max abs difference |\n|---|---|---|---|---|---|---|\n");
    /* rows: T*B of one half of a split batch, or all of an unsplit one */
    measure("LSTM long, a half", 4000, 256, 64);
    measure("GRU long, a half", 4000, 192, 64);
    measure("LSTM latency", 100, 512, 128);
    measure("LSTM (1, 200, 128, 128)", 200, 512, 128);
    measure("LSTM (16, 100, 128, 128), a half", 800, 512, 128);
    measure("LSTM medium, a half", 800, 1024, 256);
    measure("LSTM small, a half", 200, 2048, 512);
    measure("LSTM large, a half", 3200, 2048, 512);
    return 0;
}
