/* A short call's two few-row products, the input projection x @ W_ih^T and the
 * recurrent h @ W_hh^T (K = I = H each, into two arrays), against one product
 * over [x, h] and [W_ih, W_hh] (2K): what fusing them would save at most (one
 * reduction of the partial sums, one store, one pass over the rows' blocks
 * instead of two). One core, fr_gemm_nt (src_ext/_small_gemm.h), medians of
 * 15 runs, the two alternating.
 *
 * Build and run from the repository root:
 *   gcc -O3 -march=x86-64-v4 -I src_ext -I benchmarks benchmarks/small_gemm_fused.c -o /tmp/small_gemm_fused -lm
 *   taskset -c 0 /tmp/small_gemm_fused
 */
#include <stdio.h>
#include <stdlib.h>
#include "_small_gemm.h"
#include "harness.h"

#define RUNS 15

int main(void) {
    /* M rows, N = 4H (an LSTM's gates), K = I = H */
    static const int shapes[][3] = {{1, 1024, 256}, {4, 1024, 256}, {8, 1024, 256},
                                    {16, 1024, 256}, {8, 1200, 300}, {8, 400, 100},
                                    {16, 2048, 512}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float* x = random_floats((size_t)M * K);
        float* h = random_floats((size_t)M * K);
        float* wi = random_floats((size_t)N * K);
        float* wh = random_floats((size_t)N * K);
        float* xh = random_floats((size_t)M * 2 * K);
        float* w2 = random_floats((size_t)N * 2 * K);
        float* g = random_floats((size_t)M * N);
        float* gh = random_floats((size_t)M * N);
        int reps = (int)(2e8 / ((double)M * N * K)) + 1;
        double two[RUNS], one[RUNS];
        for (int r = 0; r < RUNS; r++) {
            double t = now();
            for (int i = 0; i < reps; i++) {
                fr_gemm_nt(M, N, K, x, K, wi, K, 0, g, N);
                fr_gemm_nt(M, N, K, h, K, wh, K, 0, gh, N);
            }
            two[r] = (now() - t) / reps * 1e6;
            t = now();
            for (int i = 0; i < reps; i++) fr_gemm_nt(M, N, 2 * K, xh, 2 * K, w2, 2 * K, 0, g, N);
            one[r] = (now() - t) / reps * 1e6;
        }
        qsort(two, RUNS, sizeof(double), by_value);
        qsort(one, RUNS, sizeof(double), by_value);
        printf("M=%d N=%d K=%d: two products %.2f us, one of 2K %.2f us: %.2fx\n", M, N, K,
               two[RUNS / 2], one[RUNS / 2], two[RUNS / 2] / one[RUNS / 2]);
        free(x); free(h); free(wi); free(wh); free(xh); free(w2); free(g); free(gh);
    }
    return 0;
}
