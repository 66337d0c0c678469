/* Would splitting the hidden units across the two cores beat splitting the batch?
 *
 * fastrnn splits a batch in halves, one per core, each streaming all of W_hh
 * every step (fastrnn/_parallel.py). Splitting the units instead gives each
 * core half of W_hh's panels for all the rows, so its half can stay in its
 * own L2, at the price of a barrier per step (the next step needs every
 * unit's h). This times the per-step packed product (src_ext/_packed_gemm.h)
 * three ways, T steps a run, two threads pinned to CPUs 0 and 1: unit split
 * (half the panels each, a spinning barrier per step), batch split (half the
 * rows each, no barrier) and one thread alone; the three alternate over 9
 * runs and the medians are printed.
 *
 * Build (x86-64-v4 for the AVX-512 blocks; -march=x86-64-v3 for the AVX2 ones)
 * and run from the repository root:
 *   gcc -O3 -march=x86-64-v4 -pthread -I src_ext benchmarks/unit_split.c -o /tmp/unit_split -lm
 *   /tmp/unit_split B K N T      # e.g. 16 512 2048 400: an LSTM small step
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include "_packed_gemm.h"
#include "two_threads.h"


static int B, K, N, T, mode;
static float *A, *C, *P;

static void* worker(void* arg) {
    int id = (int)(long)arg;
    fr_pin(id);
    ptrdiff_t np = fr_n_panels(N);
    for (int t = 0; t < T; t++) {
        if (mode == 0) {          /* unit split */
            fr_gemm_packed(B, N, K, A, K, P, 0.0f, C, N, np * id / 2, np * (id + 1) / 2, t & 1);
            fr_barrier2();
        } else if (mode == 1) {   /* batch split */
            int b0 = B * id / 2, b1 = B * (id + 1) / 2;
            fr_gemm_packed(b1 - b0, N, K, A + b0 * K, K, P, 0.0f, C + b0 * N, N, 0, np, t & 1);
        } else if (id == 0) {     /* one thread, all */
            fr_gemm_packed(B, N, K, A, K, P, 0.0f, C, N, 0, np, t & 1);
        }
    }
    return NULL;
}
static double go(int m) {
    mode = m;
    return fr_run_two(worker, T);
}
int main(int argc, char** argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s B K N T\n", argv[0]);
        return 2;
    }
    B = atoi(argv[1]); K = atoi(argv[2]); N = atoi(argv[3]); T = atoi(argv[4]);
    A = aligned_alloc(64, (size_t)B * K * 4); C = aligned_alloc(64, (size_t)B * N * 4);
    float* w = aligned_alloc(64, (size_t)K * N * 4); P = aligned_alloc(64, fr_packed_size(K, N) * 4);
    for (long i = 0; i < (long)B * K; i++) A[i] = sinf(i);
    for (long i = 0; i < (long)K * N; i++) w[i] = cosf(i) * 0.01f;
    fr_pack_panels(K, N, w, 0, P);
    double r[3][9];
    for (int i = 0; i < 9; i++) for (int m = 0; m < 3; m++) r[(m + i) % 3][i] = go((m + i) % 3);
    for (int m = 0; m < 3; m++) qsort(r[m], 9, sizeof(double), by_value);
    printf("B=%d K=%d N=%d: us/step unit-split %.2f  batch-split %.2f  one-thread %.2f  (batch/unit %.2f)\n", B, K, N, r[0][4], r[1][4], r[2][4], r[1][4] / r[0][4]);
}
