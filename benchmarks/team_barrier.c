/* What a unit-split team pays to meet once a step: src_ext/_team.h's
 * spinning barrier against OpenMP's own.
 *
 * A unit-split call (src_ext/lstm.pyx, gru.pyx) meets its team after every
 * step of its forward and of its backward. This times fr_barrier_wait with
 * spin = 1 and spin = 0 (OpenMP's barrier) on a team of two threads that do
 * nothing else, 200,000 meetings a run, the two alternating over 7 runs;
 * medians in ns a meeting.
 *
 * Build and run from the repository root:
 *   gcc -O2 -fopenmp -I src_ext -I benchmarks benchmarks/team_barrier.c -o /tmp/team_barrier && /tmp/team_barrier
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "_team.h"
#include "harness.h"

#define MEETINGS 200000
#define RUNS 7

static double meeting_ns(int spin)
{
    fr_barrier bar;
    fr_barrier_init(&bar, spin);
    double t0 = now();
#pragma omp parallel num_threads(2)
    for (int i = 0; i < MEETINGS; i++)
        fr_barrier_wait(&bar);
    return (now() - t0) / MEETINGS * 1e9;
}

int main(void)
{
    double t[2][RUNS];
    for (int r = 0; r < RUNS; r++)
        for (int v0 = 0; v0 < 2; v0++) {
            int v = (v0 + r) % 2;                         /* alternate which goes first */
            t[v][r] = meeting_ns(v);
        }
    qsort(t[0], RUNS, sizeof(double), by_value);
    qsort(t[1], RUNS, sizeof(double), by_value);
    printf("a meeting of two threads, median of %d runs of %d: OpenMP's barrier %.0f ns, "
           "the spinning one %.0f ns\n", RUNS, MEETINGS, t[0][RUNS / 2], t[1][RUNS / 2]);
    return 0;
}
