/* One row by wide weights on two cores: where the weights leave the caches.
 *
 * A frozen GRU's one-step call at (B, T, I, H) = (1, 1, H, H) splits its
 * units over the two cores: each thread multiplies x and h by its rows of
 * each gate's W_ih and W_hh (src_ext/_units.pxd, ``part_gates``, through
 * src_ext/_small_gemm.h), 3 * 2 * H/2 rows of H floats, and the two meet at
 * a barrier. This runs those products alone (no fused pass), 2 threads
 * pinned to CPUs 0 and 1, 200 calls a run, 9 runs; it prints the median
 * time of a call and the weights' bytes over it. At H = 1024 ONNX Runtime
 * read the call's 24 MiB at about 87 GB/s where fastrnn read them at about
 * 70 (benchmarks/RESULTS.md); this shows at which size the two cores' share
 * of the weights stops fitting the caches this machine gives them.
 *
 * Build and run from the repository root:
 *   gcc -O3 -march=x86-64-v4 -pthread -I src_ext benchmarks/wide_row.c -o /tmp/wide_row -lm
 *   for h in 768 832 896 960 1024; do /tmp/wide_row $h; done
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "_small_gemm.h"
#include "two_threads.h"

#define CALLS 200
#define RUNS 9

static int H;
static float *w_ih, *w_hh, *x, *h, *out;

static void* worker(void* arg)
{
    long part = (long)arg;
    fr_pin((int)part);
    ptrdiff_t G = 3 * H, u0 = part * H / 2, u1 = (part + 1) * H / 2;
    for (int c = 0; c < CALLS; c++) {
        for (int k = 0; k < 3; k++) {
            fr_gemm_nt(1, u1 - u0, H, x, H, w_ih + (k * H + u0) * H, H, 1.0f, out + k * H + u0, G);
            fr_gemm_nt(1, u1 - u0, H, h, H, w_hh + (k * H + u0) * H, H, 0.0f,
                       out + G + k * H + u0, G);
        }
        fr_barrier2();
    }
    return NULL;
}

/* n random floats on 2 MiB pages where the kernel gives them (madvise), as
 * NumPy asks for its large arrays: on 4 KiB pages the weight's rows, 4 KiB
 * apart at H = 1024, each take a TLB entry, and the products ran at half
 * the rate (65-68 against 120-126 GB/s at H = 1024) */
static float* huge_random_floats(size_t n)
{
    size_t bytes = (n * sizeof(float) + (1u << 21) - 1) & ~(((size_t)1 << 21) - 1);
    float* a = aligned_alloc((size_t)1 << 21, bytes);
    madvise(a, bytes, MADV_HUGEPAGE);
    float* r = random_floats(n);
    memcpy(a, r, n * sizeof(float));
    free(r);
    return a;
}

int main(int argc, char** argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s H\n", argv[0]);
        return 2;
    }
    H = atoi(argv[1]);
    w_ih = huge_random_floats((size_t)3 * H * H);
    w_hh = huge_random_floats((size_t)3 * H * H);
    x = random_floats(H);
    h = random_floats(H);
    out = calloc((size_t)6 * H, sizeof(float));
    double us[RUNS];
    for (int r = 0; r < RUNS; r++)
        us[r] = fr_run_two(worker, CALLS);
    qsort(us, RUNS, sizeof(double), by_value);
    double bytes = 2.0 * 3 * H * H * sizeof(float);
    printf("H = %d: weights %.1f MiB, %.1f us a call, %.1f GB/s\n", H, bytes / (1 << 20),
           us[RUNS / 2], bytes / us[RUNS / 2] * 1e-3);
    return 0;
}
