/* What the C harnesses in benchmarks/ share: a monotonic clock and the
 * comparison qsort needs to take medians. */
#ifndef FASTRNN_BENCH_HARNESS_H
#define FASTRNN_BENCH_HARNESS_H
#include <time.h>

/* seconds on the monotonic clock */
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* ascending doubles, for qsort */
static int by_value(const void* a, const void* b)
{
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}
#endif
