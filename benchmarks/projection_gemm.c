/* Could the packed-panel product replace OpenBLAS for the input projection?
 *
 * Each call projects the inputs of many steps at once, gates = x @ W_ih^T,
 * with SciPy's OpenBLAS sgemm. The recurrent product's packed panels
 * (src_ext/_packed_gemm.h) run at the FMA peak in L1 on a quiet core
 * (benchmarks/core_peak.c), so this times both on the projections of one
 * half of a split batch of the grid, on one core, the two alternating, median
 * of 21 rounds: fr_gemm_packed over W_ih packed once (packing not timed), and
 * sgemm on the row-major x (rows, I) and W_ih^T (I, G*H).
 *
 * Build and run from the repository root, with the path of SciPy's OpenBLAS:
 *   gcc -O3 -march=x86-64-v4 -I src_ext benchmarks/projection_gemm.c -o /tmp/projection_gemm -ldl
 *   OPENBLAS=$(python -c "import scipy, glob, os; print(glob.glob(os.path.join(os.path.dirname(scipy.__file__), '..', 'scipy.libs', 'libscipy_openblas*.so'))[0])")
 *   taskset -c 0 /tmp/projection_gemm "$OPENBLAS"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_packed_gemm.h"
#include "harness.h"
#include "openblas.h"

#define ROUNDS 21

static sgemm_t sgemm;

/* GFLOP/s of C (M, N) = A (M, K) @ W (K, N): packed panels, then sgemm */
static void measure(const char* what, ptrdiff_t M, ptrdiff_t K, ptrdiff_t N)
{
    float* a = aligned_alloc(64, M * K * sizeof(float));
    float* w = aligned_alloc(64, K * N * sizeof(float));
    float* c = aligned_alloc(64, M * N * sizeof(float));
    float* packed = aligned_alloc(64, fr_packed_size(K, N) * sizeof(float));
    for (ptrdiff_t i = 0; i < M * K; i++)
        a[i] = 0.01f * (float)(i % 7);
    for (ptrdiff_t i = 0; i < K * N; i++)
        w[i] = 0.001f * (float)(i % 11);
    fr_pack_panels(K, N, w, 0, packed);
    int calls = (int)(1e8 / (2.0 * M * K * N)) + 1;      /* ~1 ms a turn */
    double t[2][ROUNDS];
    for (int r = 0; r < ROUNDS; r++)
        for (int v0 = 0; v0 < 2; v0++) {
            int v = (v0 + r) % 2;                         /* alternate which goes first */
            double t0 = now();
            for (int i = 0; i < calls; i++) {
                if (v == 0) {
                    fr_gemm_packed(M, N, K, a, K, packed, 0.0f, c, N, 0, fr_n_panels(N), 0);
                } else {
                    /* row-major C = A @ W is column-major C^T = W^T @ A^T */
                    float one = 1, zero = 0;
                    int m = (int)M, n = (int)N, k = (int)K;
                    sgemm("N", "N", &n, &m, &k, &one, w, &n, a, &k, &zero, c, &n);
                }
            }
            t[v][r] = (now() - t0) / calls;
        }
    qsort(t[0], ROUNDS, sizeof(double), by_value);
    qsort(t[1], ROUNDS, sizeof(double), by_value);
    double flop = 2.0 * M * K * N, packed_rate = flop / t[0][ROUNDS / 2] / 1e9;
    double sgemm_rate = flop / t[1][ROUNDS / 2] / 1e9;
    printf("| %s | %td x %td x %td | %.1f | %.1f | %.2f |\n", what, M, K, N, packed_rate,
           sgemm_rate, packed_rate / sgemm_rate);
    free(a);
    free(w);
    free(c);
    free(packed);
}

int main(int argc, char** argv)
{
    sgemm = openblas_sgemm(argc, argv);
    printf("| projection (one half) | rows x I x G*H | packed GFLOP/s | sgemm GFLOP/s | packed / sgemm |\n");
    printf("|---|---|---|---|---|\n");
    /* rows: a chunk of steps x the half's batch (_buffers.chunk) */
    measure("LSTM large", 1024, 512, 2048);
    measure("GRU large", 768, 512, 1536);
    measure("LSTM small", 200, 512, 2048);
    measure("LSTM medium", 512, 256, 1024);
    measure("LSTM long", 256, 64, 256);
    return 0;
}
