/* How close the packed product's inner loop comes to each core's FMA peak,
 * and how that moves with time on a shared machine.
 *
 * For each sample, on each CPU in turn (pinned with sched_setaffinity), this
 * times, median of 15 repetitions:
 *   - peak: 12 independent chains of 8-wide FMAs, no memory operands (the
 *     most FMA work the core retires: 2 x 8 x 2 flops per cycle on AVX2);
 *   - panel: fr_panel_rows_4 of src_ext/_packed_gemm.h, the kernels' 4-row
 *     block of the recurrent product, over one panel of K = 256 rows (16 KiB)
 *     and 4 rows of A, all in L1: its FMAs plus a load per W vector and a
 *     broadcast per row of A, with no cache misses.
 * panel / peak is the inner loop's efficiency; any shortfall of a whole call
 * beyond it comes from memory, the other passes and the calls around them.
 *
 * Build and run from the repository root (samples, seconds between them):
 *   gcc -O3 -march=x86-64-v3 -I src_ext benchmarks/core_peak.c -o /tmp/core_peak && /tmp/core_peak 8 5
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "_packed_gemm.h"
#include "harness.h"

#define REPS 15
#define K 256

static double median(double* t, int n)
{
    qsort(t, n, sizeof(double), by_value);
    return t[n / 2];
}

/* GFLOP/s of `iters` rounds of 12 independent FMA chains */
__attribute__((noinline)) static double fma_peak(long iters)
{
    __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-3f);
    __m256 a0 = b, a1 = c, a2 = b, a3 = c, a4 = b, a5 = c, a6 = b, a7 = c, a8 = b, a9 = c,
           a10 = b, a11 = c;
    double t0 = now();
    for (long i = 0; i < iters; i++) {
#define F(x) x = _mm256_fmadd_ps(x, b, c);
        F(a0) F(a1) F(a2) F(a3) F(a4) F(a5) F(a6) F(a7) F(a8) F(a9) F(a10) F(a11)
#undef F
        /* keeps all twelve chains in registers and the loop from being folded */
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5),
                         "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
    }
    double t = now() - t0;
    volatile float sink = (a0[0] + a11[0]);
    (void)sink;
    return 12.0 * 16.0 * (double)iters / t / 1e9;
}

/* GFLOP/s of `calls` 4-row panel products over an L1-resident panel */
__attribute__((noinline)) static double panel_rate(const float* a, const float* w, long calls)
{
    float acc[4 * FR_PANEL];
    volatile float sink = 0;
    double t0 = now();
    for (long i = 0; i < calls; i++) {
        fr_panel_rows_4(K, a, K, w, acc);
        __asm__ volatile("" : : "r"(acc) : "memory");
    }
    double t = now() - t0;
    sink += acc[5];
    return 2.0 * 4 * FR_PANEL * K * (double)calls / t / 1e9;
}

static int pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

int main(int argc, char** argv)
{
    int samples = argc > 1 ? atoi(argv[1]) : 8;
    int pause = argc > 2 ? atoi(argv[2]) : 5;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    float* a = aligned_alloc(64, 4 * K * sizeof(float));
    float* w = aligned_alloc(64, K * FR_PANEL * sizeof(float));
    for (int i = 0; i < 4 * K; i++)
        a[i] = 1e-3f * (float)(i % 7);
    for (int i = 0; i < K * FR_PANEL; i++)
        w[i] = 1e-3f * (float)(i % 5);
    printf("| sample | cpu | FMA peak GFLOP/s | panel GFLOP/s | panel / peak |\n");
    printf("|---|---|---|---|---|\n");
    for (int s = 0; s < samples; s++) {
        for (int cpu = 0; cpu < ncpu; cpu++) {
            if (pin(cpu) != 0)
                continue;
            double p[REPS], q[REPS];
            for (int r = 0; r < REPS; r++) {   /* ~5 ms each, alternating */
                p[r] = fma_peak(2000000);
                q[r] = panel_rate(a, w, 20000);
            }
            double peak = median(p, REPS), panel = median(q, REPS);
            printf("| %d | %d | %.1f | %.1f | %.2f |\n", s, cpu, peak, panel, panel / peak);
            fflush(stdout);
        }
        if (s + 1 < samples)
            sleep(pause);
    }
    free(a);
    free(w);
    return 0;
}
