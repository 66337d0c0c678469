/* The packed-panel product of src_ext/_packed_gemm.h alone: GFLOP/s per shape.
 *
 * Times fr_gemm_packed (C = A @ W, W packed once, beta = 0) on one core,
 * median of 31 rounds of ~1e7 multiply-adds each, and checks it against a
 * double-precision product. Build it once per instruction set to compare
 * the kernel modules' builds (the x86-64-v4 one has its own AVX-512 blocks):
 *
 *   gcc -O3 -march=x86-64-v3 -I src_ext benchmarks/packed_product.c -o /tmp/pp_v3 -lm
 *   gcc -O3 -march=x86-64-v4 -I src_ext benchmarks/packed_product.c -o /tmp/pp_v4 -lm
 *   taskset -c 0 /tmp/pp_v3; taskset -c 0 /tmp/pp_v4        # the default shapes
 *   taskset -c 0 /tmp/pp_v4 8 512 2048                       # or one B K N
 *
 * The default shapes are the per-step products of the grid's split halves:
 * forward (K = H, N = G*H) and backward (K = G*H, N = H).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "_packed_gemm.h"
#include "harness.h"

#define ROUNDS 31

static void measure(int B, int K, int N)
{
    float* a = aligned_alloc(64, (size_t)B * K * sizeof(float));
    float* w = aligned_alloc(64, (size_t)K * N * sizeof(float));
    float* c = aligned_alloc(64, (size_t)B * N * sizeof(float));
    float* packed = aligned_alloc(64, fr_packed_size(K, N) * sizeof(float));
    for (long i = 0; i < (long)B * K; i++)
        a[i] = sinf(0.37f * (float)i);
    for (long i = 0; i < (long)K * N; i++)
        w[i] = 0.1f * cosf(0.11f * (float)i);
    fr_pack_panels(K, N, w, 0, packed);
    fr_gemm_packed(B, N, K, a, K, packed, 0.0f, c, N, 0, fr_n_panels(N), 0);
    double err = 0;
    for (int b = 0; b < B; b++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (double)a[b * K + k] * w[(long)k * N + n];
            err = fmax(err, fabs(s - c[b * N + n]));
        }
    int calls = (int)(2e7 / (2.0 * B * K * N)) + 1;
    double t[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = now();
        for (int i = 0; i < calls; i++)
            fr_gemm_packed(B, N, K, a, K, packed, 0.0f, c, N, 0, fr_n_panels(N), 0);
        t[r] = (now() - t0) / calls;
    }
    qsort(t, ROUNDS, sizeof(double), by_value);
    printf("| %d | %d | %d | %.1f | %.2f | %.1e |\n", B, K, N,
           2.0 * B * K * N / t[ROUNDS / 2] / 1e9, t[ROUNDS / 2] * 1e6, err);
    free(a);
    free(w);
    free(c);
    free(packed);
}

int main(int argc, char** argv)
{
    printf("| B | K | N | GFLOP/s | us | max abs error |\n|---|---|---|---|---|---|\n");
    if (argc == 4) {
        measure(atoi(argv[1]), atoi(argv[2]), atoi(argv[3]));
        return 0;
    }
    /* latency (B = 1), long (4 a half), small (8), medium (16), large (32) */
    static const int shapes[][3] = {
        {1, 128, 512}, {1, 512, 128}, {1, 128, 384}, {4, 64, 256}, {4, 256, 64},
        {8, 512, 2048}, {8, 2048, 512}, {8, 512, 1536}, {16, 256, 1024}, {16, 1024, 256},
        {16, 256, 768}, {32, 512, 2048}, {32, 2048, 512}, {32, 512, 1536},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        measure(shapes[s][0], shapes[s][1], shapes[s][2]);
    return 0;
}
