/* The machine's FMA peak: the most float32 FLOP/s its cores can retire.
 *
 * No implementation of a layer can run faster than its multiply-adds at this
 * rate, whatever its GEMMs; benchmarks/targets.py --peak turns a target into
 * the fraction of it that the target asks for. This times 12 independent
 * chains of FMAs on registers (no memory operands), 16 floats wide where the
 * compiler targets AVX-512 and 8 wide otherwise, median of 15 repetitions of
 * about 0.1 s: first each CPU alone, pinned, then all of them at once (one
 * pinned thread each, their median), which is the rate that bounds a call
 * running on every core.
 *
 * Build and run from the repository root:
 *   gcc -O2 -march=x86-64-v4 -I benchmarks benchmarks/fma_peak.c -o /tmp/fma_peak -lpthread
 *   /tmp/fma_peak            # every CPU the process may run on
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>

#include "harness.h"

#define REPS 15
#define ITERS 20000000L

#ifdef __AVX512F__
typedef __m512 vec;
#define WIDTH 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define REG "+v"
#else
typedef __m256 vec;
#define WIDTH 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define REG "+x"
#endif

/* GFLOP/s of ITERS rounds of 12 chains: 12 chains of 4-cycle FMAs keep two
 * FMA units busy with room to spare */
__attribute__((noinline)) static double fma_rate(void)
{
    vec b = SET1(0.999f), c = SET1(1e-3f);
    vec a0 = b, a1 = c, a2 = b, a3 = c, a4 = b, a5 = c, a6 = b, a7 = c, a8 = b, a9 = c,
        a10 = b, a11 = c;
    double t0 = now();
    for (long i = 0; i < ITERS; i++) {
#define F(x) x = FMA(x, b, c);
        F(a0) F(a1) F(a2) F(a3) F(a4) F(a5) F(a6) F(a7) F(a8) F(a9) F(a10) F(a11)
#undef F
        /* keeps all twelve chains in registers and the loop from being folded */
        __asm__ volatile("" : REG(a0), REG(a1), REG(a2), REG(a3), REG(a4), REG(a5), REG(a6),
                         REG(a7), REG(a8), REG(a9), REG(a10), REG(a11));
    }
    double t = now() - t0;
    volatile float sink = a0[0] + a11[0];
    (void)sink;
    return 12.0 * 2 * WIDTH * (double)ITERS / t / 1e9;
}

struct job {
    int cpu;
    double median;
};

static void* run(void* arg)
{
    struct job* job = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(job->cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        perror("sched_setaffinity");
    double t[REPS];
    for (int r = 0; r < REPS; r++)
        t[r] = fma_rate();
    qsort(t, REPS, sizeof(double), by_value);
    job->median = t[REPS / 2];
    return NULL;
}

int main(void)
{
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) {
        perror("sched_getaffinity");
        return 1;
    }
    struct job jobs[CPU_SETSIZE];
    int n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &allowed))
            jobs[n++].cpu = cpu;
    printf("%d-wide float32 FMAs, GFLOP/s, median of %d\n", WIDTH, REPS);
    for (int i = 0; i < n; i++) {
        run(&jobs[i]);
        printf("CPU %d alone: %.1f\n", jobs[i].cpu, jobs[i].median);
    }
    pthread_t threads[CPU_SETSIZE];
    for (int i = 0; i < n; i++)
        pthread_create(&threads[i], NULL, run, &jobs[i]);
    double total = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(threads[i], NULL);
        printf("CPU %d with the others: %.1f\n", jobs[i].cpu, jobs[i].median);
        total += jobs[i].median;
    }
    printf("all %d CPUs at once: %.1f\n", n, total);
    return 0;
}
