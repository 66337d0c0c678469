/* What the two CPUs cost each other: a hand-off between them, and memory
 * traffic side by side.
 *
 * - Round trip: two threads pinned to CPUs 0 and 1 pass a counter back and
 *   forth through one cache line, 10^6 times; the time of one round trip
 *   is what a per-step barrier between two threads costs at the least.
 * - Side by side: a thread sums a private buffer again and again (8-wide
 *   loads, 4 GB in all), alone on CPU 0, then with a second thread doing the
 *   same on CPU 1, for buffers from L1-sized to DRAM-sized; median of 3.
 *   pair / alone above 1 means the two slow each other down.
 *
 * Build and run from the repository root:
 *   gcc -O3 -march=x86-64-v3 -pthread benchmarks/two_cores.c -o /tmp/two_cores && /tmp/two_cores
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "harness.h"

#define ROUND_TRIPS 1000000L
#define BYTES_READ 4e9

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

/* ---- round trip: odd values are CPU 0's turn to be answered, even CPU 1's */
static _Alignas(64) atomic_long flag;

static void* answer(void* unused)
{
    (void)unused;
    pin(1);
    for (long i = 0; i < ROUND_TRIPS; i++) {
        while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 1)
            ;
        atomic_store_explicit(&flag, 2 * i + 2, memory_order_release);
    }
    return NULL;
}

static double round_trip_ns(void)
{
    pthread_t other;
    atomic_store(&flag, 0);
    pthread_create(&other, NULL, answer, NULL);
    pin(0);
    double t0 = now();
    for (long i = 0; i < ROUND_TRIPS; i++) {
        atomic_store_explicit(&flag, 2 * i + 1, memory_order_release);
        while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 2)
            ;
    }
    double seconds = now() - t0;
    pthread_join(other, NULL);
    return seconds / ROUND_TRIPS * 1e9;
}

/* ---- side by side */
struct reader {
    int cpu;
    ptrdiff_t bytes;
    double seconds;     /* of the timed passes */
};

static void* read_passes(void* arg)
{
    struct reader* r = arg;
    pin(r->cpu);
    ptrdiff_t n = r->bytes / sizeof(float);
    float* buf = aligned_alloc(64, r->bytes);
    for (ptrdiff_t i = 0; i < n; i++)
        buf[i] = 1e-6f;
    long passes = (long)(BYTES_READ / r->bytes);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (int timed = 0; timed < 2; timed++) {   /* a tenth untimed, to warm up */
        long count = timed ? passes : passes / 10;
        double t0 = now();
        for (long p = 0; p < count; p++)
            for (ptrdiff_t i = 0; i < n; i += 32) {
                s0 = _mm256_add_ps(s0, _mm256_load_ps(buf + i));
                s1 = _mm256_add_ps(s1, _mm256_load_ps(buf + i + 8));
                s2 = _mm256_add_ps(s2, _mm256_load_ps(buf + i + 16));
                s3 = _mm256_add_ps(s3, _mm256_load_ps(buf + i + 24));
            }
        r->seconds = now() - t0;
    }
    volatile float sink = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3))[0];
    (void)sink;
    free(buf);
    return NULL;
}

int main(void)
{
    printf("round trip between CPU 0 and CPU 1: %.0f ns\n\n", round_trip_ns());
    printf("| buffer per thread | alone GB/s | each of a pair GB/s | pair / alone (time) |\n");
    printf("|---|---|---|---|\n");
    ptrdiff_t sizes[] = {16 << 10, 64 << 10, 256 << 10, 512 << 10, 2 << 20, 8 << 20, 64 << 20};
    for (int s = 0; s < (int)(sizeof sizes / sizeof sizes[0]); s++) {
        double alone[3], pair[3];
        for (int rep = 0; rep < 3; rep++) {
            struct reader a = {0, sizes[s], 0}, b = {1, sizes[s], 0};
            read_passes(&a);
            alone[rep] = a.seconds;
            pthread_t t;
            pthread_create(&t, NULL, read_passes, &b);
            read_passes(&a);
            pthread_join(t, NULL);
            pair[rep] = (a.seconds + b.seconds) / 2;
        }
        qsort(alone, 3, sizeof(double), by_value);
        qsort(pair, 3, sizeof(double), by_value);
        double bytes = (double)(long)(BYTES_READ / sizes[s]) * sizes[s];
        printf("| %td KiB | %.1f | %.1f | %.2f |\n", sizes[s] >> 10, bytes / alone[1] / 1e9,
               bytes / pair[1] / 1e9, pair[1] / alone[1]);
        fflush(stdout);
    }
    return 0;
}
