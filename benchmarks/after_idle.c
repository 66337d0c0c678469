/* How a burst of reads slows down after the core has done something else.
 *
 * A call of fastrnn (or of any peer) timed right after another program's
 * work runs slower than the same call back to back. This shows the machine's
 * part of that, with no Python and no threads: one core spins for GAP ms on
 * scalar arithmetic (no memory traffic), then runs 400 repetitions of one of
 *   - prod:    the B=1 packed product of an LSTM latency step (W_hh 256 KiB,
 *              src_ext/_packed_gemm.h), as the kernels run it each step;
 *   - read256: a sum over the same packed bytes, 32-byte loads;
 *   - read128: the same with 16-byte loads;
 *   - scalar:  5000 dependent scalar multiply-adds (no memory).
 * It prints the median (41 rounds) of the 1st, 2nd, 6th, ... repetition in us.
 * With GAP 0 every repetition takes about the same time. On the development
 * machine (four runs), after GAP = 20 ms the first read took 6-15x as long (the
 * caches refilled) and the following ones 1.2-1.5x as long for roughly a
 * millisecond, while the scalar loop ran at its usual speed: the slowdown is
 * in the memory system, not the clock, and it is not fastrnn's.
 *
 * Build and run from the repository root:
 *   gcc -O3 -march=x86-64-v3 -I src_ext benchmarks/after_idle.c -o /tmp/after_idle
 *   /tmp/after_idle 0 && /tmp/after_idle 20
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "_packed_gemm.h"
#include "harness.h"

#define ROUNDS 41
#define REPS 400

static const ptrdiff_t K = 128, N = 512;
static float *h, *out, *packed;
static volatile float sink;

__attribute__((noinline)) static void prod(void)
{
    fr_gemm_packed(1, N, K, h, K, packed, 1.0f, out, N, 0, fr_n_panels(N), 0);
}

__attribute__((noinline)) static void read256(void)
{
    __m256 s[8];
    for (int u = 0; u < 8; u++)
        s[u] = _mm256_setzero_ps();
    for (ptrdiff_t i = 0; i + 64 <= fr_packed_size(K, N); i += 64)
        for (int u = 0; u < 8; u++)
            s[u] = _mm256_add_ps(s[u], _mm256_load_ps(packed + i + 8 * u));
    for (int u = 1; u < 8; u++)
        s[0] = _mm256_add_ps(s[0], s[u]);
    sink = s[0][0];
}

__attribute__((noinline)) static void read128(void)
{
    __m128 s[8];
    for (int u = 0; u < 8; u++)
        s[u] = _mm_setzero_ps();
    for (ptrdiff_t i = 0; i + 32 <= fr_packed_size(K, N); i += 32)
        for (int u = 0; u < 8; u++)
            s[u] = _mm_add_ps(s[u], _mm_load_ps(packed + i + 4 * u));
    for (int u = 1; u < 8; u++)
        s[0] = _mm_add_ps(s[0], s[u]);
    sink = s[0][0];
}

__attribute__((noinline)) static void scalar(void)
{
    volatile double x = 1;
    for (int i = 0; i < 5000; i++)
        x = x * 1.0000001 + 1e-9;
}

int main(int argc, char** argv)
{
    double gap = (argc > 1 ? atof(argv[1]) : 20) * 1e-3;
    h = aligned_alloc(64, 64 * ((K * sizeof(float) + 63) / 64));
    out = aligned_alloc(64, 64 * ((N * sizeof(float) + 63) / 64));
    float* w = aligned_alloc(64, K * N * sizeof(float));
    packed = aligned_alloc(64, fr_packed_size(K, N) * sizeof(float));
    for (ptrdiff_t k = 0; k < K; k++)
        h[k] = 0.01f * (float)(k % 5);
    for (ptrdiff_t i = 0; i < K * N; i++)
        w[i] = 0.001f * (float)(i % 11);
    fr_pack_panels(K, N, w, 0, packed);
    void (*runs[])(void) = {prod, read256, read128, scalar};
    const char* names[] = {"prod", "read256", "read128", "scalar"};
    const int marks[] = {0, 1, 5, 50, 150, 250, 399};
    static double t[REPS][ROUNDS];
    printf("# gap %.0f ms: median us of repetition", gap * 1e3);
    for (int m = 0; m < 7; m++)
        printf(" %d", marks[m] + 1);
    printf("\n");
    for (int f = 0; f < 4; f++) {
        for (int r = 0; r < ROUNDS; r++) {
            volatile double x = 1;
            double end = now() + gap;
            while (now() < end)
                for (int i = 0; i < 1000; i++)
                    x = x * 1.0000001 + 1e-9;
            double t0 = now();
            for (int s = 0; s < REPS; s++) {
                runs[f]();
                double t1 = now();
                t[s][r] = (t1 - t0) * 1e6;
                t0 = t1;
            }
        }
        printf("%-8s", names[f]);
        for (int m = 0; m < 7; m++) {
            qsort(t[marks[m]], ROUNDS, sizeof(double), by_value);
            printf(" %7.2f", t[marks[m]][ROUNDS / 2]);
        }
        printf("\n");
    }
    free(h);
    free(out);
    free(w);
    free(packed);
    return 0;
}
