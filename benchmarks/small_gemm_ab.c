/* The few-row product (src_ext/_small_gemm.h) of two checkouts, one core:
 * the same products through each, alternating over RUNS runs; medians in
 * microseconds and the old/new ratio (above 1: the new one is faster), and
 * the largest relative difference of their results (0 when the bits agree).
 *
 * The header is included once per side, in a wrapper compiled on its own
 * against that checkout's src_ext (its functions are static). From the
 * repository root, with OLD a checkout of the commit to compare against:
 *   gcc -O3 -march=x86-64-v4 -DSIDE=new -I src_ext -c benchmarks/small_gemm_ab.c -o /tmp/new.o
 *   gcc -O3 -march=x86-64-v4 -DSIDE=old -I OLD/src_ext -c benchmarks/small_gemm_ab.c -o /tmp/old.o
 *   gcc -O3 -march=x86-64-v4 -I benchmarks benchmarks/small_gemm_ab.c /tmp/old.o /tmp/new.o \
 *       -o /tmp/small_gemm_ab -lm
 *   taskset -c 0 /tmp/small_gemm_ab
 * (-march=x86-64-v3 for the AVX2 build.)
 */
#include <stddef.h>

#define NT_ARGS ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* A, ptrdiff_t lda, \
                const float* W, ptrdiff_t ldw, float beta, float* C, ptrdiff_t ldc

#ifdef SIDE
/* one side: its header's fr_gemm_nt under the name <SIDE>_nt */
#include "_small_gemm.h"
#define GLUE(a, b) a##b
#define NAME(side) GLUE(side, _nt)
void NAME(SIDE)(NT_ARGS) { fr_gemm_nt(M, N, K, A, lda, W, ldw, beta, C, ldc); }
#else
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "harness.h"

#define RUNS 15

void old_nt(NT_ARGS);
void new_nt(NT_ARGS);

int main(void)
{
    static const int shapes[][2] = {{512, 256}, {1024, 256}, {1024, 512}, {2048, 512},
                                    {384, 128}, {512, 128}, {256, 64}, {300, 100}};
    static const int rows[] = {1, 2, 3, 4, 8, 16, 32};
    printf("| M | N | K | old us | new us | old/new | max rel diff |\n");
    printf("|---|---|---|---|---|---|---|\n");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t ri = 0; ri < sizeof rows / sizeof rows[0]; ri++) {
            int N = shapes[s][0], K = shapes[s][1], M = rows[ri];
            float* A = random_floats((size_t)M * K);
            float* W = random_floats((size_t)N * K);
            float* C_old = malloc(sizeof(float) * M * N);
            float* C_new = malloc(sizeof(float) * M * N);
            int calls = (int)(1e8 / ((double)M * N * K)) + 10;
            double t_old[RUNS], t_new[RUNS];
            for (int r = 0; r < RUNS; r++) {
                double t0 = now();
                for (int c = 0; c < calls; c++) old_nt(M, N, K, A, K, W, K, 0.0f, C_old, N);
                t_old[r] = (now() - t0) / calls;
                t0 = now();
                for (int c = 0; c < calls; c++) new_nt(M, N, K, A, K, W, K, 0.0f, C_new, N);
                t_new[r] = (now() - t0) / calls;
            }
            double diff = 0;
            for (int i = 0; i < M * N; i++) {
                double d = fabs(C_old[i] - C_new[i]) / (fabs(C_old[i]) + 1e-3);
                diff = d > diff ? d : diff;
            }
            qsort(t_old, RUNS, sizeof(double), by_value);
            qsort(t_new, RUNS, sizeof(double), by_value);
            double a = t_old[RUNS / 2], b = t_new[RUNS / 2];
            printf("| %d | %d | %d | %.2f | %.2f | %.2f | %.1e |\n", M, N, K, a * 1e6, b * 1e6,
                   a / b, diff);
            free(A), free(W), free(C_old), free(C_new);
        }
    return 0;
}
#endif
