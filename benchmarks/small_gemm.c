/* A few rows times a weight in PyTorch's layout, three ways, one core:
 *   nt     fr_gemm_nt (src_ext/_small_gemm.h): W streamed once for all rows
 *   gemv   OpenBLAS's SGEMV once per row: what src_ext/_blas.pxd did before
 *   panels fr_gemm_packed on W^T packed beforehand (a frozen layer's panels;
 *          the packing itself not timed)
 * for M rows of A (M, K) and W (N, K): C = A @ W^T. Each case alternates
 * the three over RUNS runs; medians in microseconds a product.
 *
 * Build and run from the repository root, with the path of SciPy's OpenBLAS:
 *   OPENBLAS=$(python -c "import scipy, glob, os; print(glob.glob(os.path.join(os.path.dirname(scipy.__file__), '..', 'scipy.libs', 'libscipy_openblas*.so'))[0])")
 *   gcc -O3 -march=x86-64-v4 -I src_ext benchmarks/small_gemm.c -o /tmp/small_gemm -ldl -lm
 *   taskset -c 0 /tmp/small_gemm "$OPENBLAS"
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_packed_gemm.h"
#include "_small_gemm.h"
#include "harness.h"

#define RUNS 15

typedef void (*sgemv_t)(const char*, const int*, const int*, const float*, const float*,
                        const int*, const float*, const int*, const float*, float*, const int*);

int main(int argc, char** argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH_TO_SCIPY_OPENBLAS\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW);
    void (*threads)(int) =
        lib ? (void (*)(int))dlsym(lib, "scipy_openblas_set_num_threads") : NULL;
    sgemv_t sgemv = lib ? (sgemv_t)dlsym(lib, "scipy_sgemv_") : NULL;
    if (sgemv == NULL || threads == NULL) {
        fprintf(stderr, "no scipy_sgemv_ in %s\n", argv[1]);
        return 1;
    }
    threads(1);
    static const int shapes[][2] = {{128, 128}, {512, 128}, {384, 128}, {1024, 256}, {768, 256},
                                    {2048, 512}, {256, 64}};
    static const int rows[] = {1, 2, 4, 8};
    printf("| M | N | K | nt us | gemv us | panels us | gemv/nt | panels/nt |\n");
    printf("|---|---|---|---|---|---|---|---|\n");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t ri = 0; ri < sizeof rows / sizeof rows[0]; ri++) {
            int N = shapes[s][0], K = shapes[s][1], M = rows[ri];
            float* A = random_floats((size_t)M * K);
            float* W = random_floats((size_t)N * K);
            float* C = malloc(sizeof(float) * M * N);
            float* P = aligned_alloc(64, sizeof(float) * ((fr_packed_size(K, N) + 15) / 16 * 16));
            fr_pack_panels(K, N, W, 1, P);
            int calls = (int)(2e8 / ((double)M * N * K)) + 10;
            double t_nt[RUNS], t_gemv[RUNS], t_p[RUNS];
            const char tr = 'T';
            const float one = 1.0f, zero = 0.0f;
            const int inc = 1;
            for (int r = 0; r < RUNS; r++) {
                double t0 = now();
                for (int c = 0; c < calls; c++)
                    fr_gemm_nt(M, N, K, A, K, W, K, 0.0f, C, N);
                t_nt[r] = (now() - t0) / calls;
                t0 = now();
                for (int c = 0; c < calls; c++)
                    for (int m = 0; m < M; m++)
                        sgemv(&tr, &K, &N, &one, W, &K, A + m * K, &inc, &zero, C + m * N, &inc);
                t_gemv[r] = (now() - t0) / calls;
                t0 = now();
                for (int c = 0; c < calls; c++)
                    fr_gemm_packed(M, N, K, A, K, P, 0.0f, C, N, 0, fr_n_panels(N), c & 1);
                t_p[r] = (now() - t0) / calls;
            }
            qsort(t_nt, RUNS, sizeof(double), by_value);
            qsort(t_gemv, RUNS, sizeof(double), by_value);
            qsort(t_p, RUNS, sizeof(double), by_value);
            double a = t_nt[RUNS / 2], b = t_gemv[RUNS / 2], p = t_p[RUNS / 2];
            printf("| %d | %d | %d | %.2f | %.2f | %.2f | %.2f | %.2f |\n", M, N, K, a * 1e6,
                   b * 1e6, p * 1e6, b / a, p / a);
            free(A), free(W), free(C), free(P);
        }
    return 0;
}
