/* What the C harnesses in benchmarks/ share: a monotonic clock and the
 * comparison qsort needs to take medians, and random inputs. */
#ifndef FASTRNN_BENCH_HARNESS_H
#define FASTRNN_BENCH_HARNESS_H
#include <stdlib.h>
#include <time.h>

/* seconds on the monotonic clock */
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* n floats drawn from U(-0.5, 0.5) by rand(), in new memory (free it) */
static inline float* random_floats(size_t n)
{
    float* x = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = (float)rand() / RAND_MAX - 0.5f;
    return x;
}

/* ascending doubles, for qsort */
static int by_value(const void* a, const void* b)
{
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}
#endif
