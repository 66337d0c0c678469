/* The floor of a B=1 step: the packed recurrent product against a plain read
 * of the same bytes.
 *
 * At B=1 each step multiplies one row of h by all of W_hh, so the product
 * cannot be faster than reading W_hh's packed panels once. For the W_hh of
 * the latency shape (H=128: RNN, GRU, LSTM), this times, on one core, median
 * of 201 rounds of 50 calls, the two taking turns:
 *   - fr_gemm_packed at B=1, the kernels' product (src_ext/_packed_gemm.h);
 *   - a sum over the same packed buffer, eight vectors at a time (the read).
 *
 * Build and run from the repository root:
 *   gcc -O3 -march=x86-64-v3 -I src_ext benchmarks/l2_floor.c -o /tmp/l2_floor && /tmp/l2_floor
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "_packed_gemm.h"
#include "harness.h"

#define ROUNDS 201
#define CALLS 50

/* sum of n floats, 64 at a time: the cost of reading them once */
__attribute__((noinline)) static float read_all(const float* w, ptrdiff_t n)
{
    fr_v8 s[8] = {{0}};
    for (ptrdiff_t i = 0; i + 64 <= n; i += 64)
        for (int u = 0; u < 8; u++)
            s[u] += *(const fr_v8*)(w + i + 8 * u);
    fr_v8 t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    return t[0] + t[7];
}

static void measure(const char* cell, ptrdiff_t K, ptrdiff_t N)
{
    float* h = aligned_alloc(64, 64 * ((K * sizeof(float) + 63) / 64));
    float* w = aligned_alloc(64, K * N * sizeof(float));
    float* out = aligned_alloc(64, 64 * ((N * sizeof(float) + 63) / 64));
    float* packed = aligned_alloc(64, fr_packed_size(K, N) * sizeof(float));
    for (ptrdiff_t k = 0; k < K; k++)
        h[k] = 0.01f * (float)(k % 5);
    for (ptrdiff_t i = 0; i < K * N; i++)
        w[i] = 0.001f * (float)(i % 11);
    memset(out, 0, N * sizeof(float));
    fr_pack_panels(K, N, w, 0, packed);   /* w is (K, N): op(W) = w */
    double t[2][ROUNDS];
    volatile float sink = 0;
    for (int r = 0; r < ROUNDS; r++)
        for (int v0 = 0; v0 < 2; v0++) {
            int v = (v0 + r) % 2;           /* alternate which one goes first */
            double t0 = now();
            for (int c = 0; c < CALLS; c++) {
                if (v == 0)
                    fr_gemm_packed(1, N, K, h, K, packed, 1.0f, out, N, 0, fr_n_panels(N), 0);
                else
                    sink += read_all(packed, fr_packed_size(K, N));
            }
            t[v][r] = (now() - t0) / CALLS;
        }
    qsort(t[0], ROUNDS, sizeof(double), by_value);
    qsort(t[1], ROUNDS, sizeof(double), by_value);
    double product = t[0][ROUNDS / 2] * 1e6, read = t[1][ROUNDS / 2] * 1e6;
    double kib = fr_packed_size(K, N) * sizeof(float) / 1024.0;
    printf("| %s | (%td, %td) | %.0f | %.2f | %.2f | %.2f |\n", cell, N, K, kib, product, read,
           read / product);
    free(h);
    free(w);
    free(out);
    free(packed);
}

int main(void)
{
    printf("| cell | W_hh | KiB | product us | read us | read / product |\n");
    printf("|---|---|---|---|---|---|\n");
    measure("rnn_tanh", 128, 128);
    measure("gru", 128, 384);
    measure("lstm", 128, 512);
    return 0;
}
