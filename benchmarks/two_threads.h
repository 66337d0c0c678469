/* What the two-thread C harnesses share (unit_split.c, unit_step.c): a
 * thread pinned to one CPU, a spinning barrier between two threads, and the
 * time a step of a run takes on two threads. Define _GNU_SOURCE before any
 * include (for CPU_SET and pthread_setaffinity_np) and link with -pthread. */
#ifndef FASTRNN_BENCH_TWO_THREADS_H
#define FASTRNN_BENCH_TWO_THREADS_H
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "harness.h"

static atomic_int fr_arrived, fr_round;

/* the calling thread on CPU ``cpu`` only */
static void fr_pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

/* two threads meet: the second to arrive starts the next round, the first
 * spins until it does (acquire: it then sees the other's writes) */
static void fr_barrier2(void)
{
    int r = atomic_load_explicit(&fr_round, memory_order_relaxed);
    if (atomic_fetch_add(&fr_arrived, 1) == 1) {
        atomic_store_explicit(&fr_arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&fr_round, r + 1, memory_order_release);
    } else {
        while (atomic_load_explicit(&fr_round, memory_order_acquire) == r)
            __builtin_ia32_pause();
    }
}

/* microseconds a step: ``worker`` on two new threads (its argument 0 and 1),
 * ``steps`` steps each, from their start to both ends */
static double fr_run_two(void* (*worker)(void*), int steps)
{
    pthread_t th[2];
    double t0 = now();
    for (long i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, worker, (void*)i);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    return (now() - t0) / steps * 1e6;
}
#endif
