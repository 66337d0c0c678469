/* The floor of a unit-split step at B = 1: what the products alone take
 * when both cores run them at once.
 *
 * A unit-split forward (lstm_forward_units, gru_forward_units) gives each of
 * the two threads half of the hidden units: every step it multiplies the
 * whole h by its gates' columns of W_hh^T (src_ext/_units.pxd,
 * ``part_gates``), writes its half of the next h and meets the other thread
 * at a barrier. This times that step without the fused pass (the new h is a
 * cheap sum of the gates), three ways, 2 threads pinned to CPUs 0 and 1, T
 * steps a run, the three alternating over 15 runs, medians printed:
 *
 *   step        the products, the half of h written, a spinning barrier;
 *   no barrier  the same, each thread running its steps on its own (the h
 *               it reads is then whatever the other has written: a timing,
 *               not a result);
 *   one core    thread 0 alone, its half of the panels: the L2 floor.
 *
 * Build and run from the repository root (H = 128: the grid's latency shape;
 * G = 4 for the LSTM, 3 for the GRU):
 *   gcc -O3 -march=x86-64-v4 -pthread -I src_ext benchmarks/unit_step.c -o /tmp/unit_step -lm
 *   /tmp/unit_step H G T           # e.g. 128 4 2000
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include "_packed_gemm.h"
#include "two_threads.h"

static int H, G, T, mode;
static float *h_slots, *gh, *P;
static void* worker(void* arg)
{
    int id = (int)(long)arg;
    fr_pin(id);
    if (mode == 2 && id == 1)
        return NULL;
    int N = G * H, u0 = H / 2 * id, u1 = u0 + H / 2;
    for (int t = 0; t < T; t++) {
        /* two slots, as the kernels' inference: read one, write the other */
        const float* h_in = h_slots + (t & 1) * 256;
        float* h_out = h_slots + ((t + 1) & 1) * 256;
        /* each gate's columns for this thread's units, the gates (like the
         * panels within each) in the opposite order on odd steps, as
         * part_gates: the panels read last are read first, from L1 */
        for (int i = 0; i < G; i++) {
            int q = t & 1 ? G - 1 - i : i;
            fr_gemm_packed(1, N, H, h_in, H, P, 0.0f, gh, N, (q * H + u0) / FR_PANEL,
                           (q * H + u1) / FR_PANEL, t & 1);
        }
        for (int j = u0; j < u1; j++)
            h_out[j] = 0.01f * gh[j] + 1e-3f * gh[(G - 1) * H + j];
        if (mode == 0)
            fr_barrier2();
    }
    return NULL;
}

static double run(int m)
{
    mode = m;
    return fr_run_two(worker, T);
}

int main(int argc, char** argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s H G T\n", argv[0]);
        return 2;
    }
    H = atoi(argv[1]);
    G = atoi(argv[2]);
    T = atoi(argv[3]);
    if (H % (2 * FR_PANEL) || H > 256 || G < 1 || T < 1) {
        fprintf(stderr, "H: a multiple of %d up to 256; G, T >= 1\n", 2 * FR_PANEL);
        return 2;
    }
    int N = G * H;
    h_slots = aligned_alloc(64, 512 * sizeof(float));
    /* each thread writes its own units' columns of gh: the halves meet on a line boundary */
    gh = aligned_alloc(64, (size_t)N * sizeof(float));
    float* w = aligned_alloc(64, (size_t)H * N * sizeof(float));
    P = aligned_alloc(64, fr_packed_size(H, N) * sizeof(float));
    for (int i = 0; i < 512; i++)
        h_slots[i] = sinf(i);
    for (long i = 0; i < (long)H * N; i++)
        w[i] = cosf(i) * 0.01f;
    fr_pack_panels(H, N, w, 0, P);
    enum { RUNS = 15 };
    double r[3][RUNS];
    for (int i = 0; i < RUNS; i++)
        for (int m = 0; m < 3; m++)
            r[(m + i) % 3][i] = run((m + i) % 3);
    for (int m = 0; m < 3; m++)
        qsort(r[m], RUNS, sizeof(double), by_value);
    printf("H=%d G=%d: us/step step %.3f  no barrier %.3f  one core %.3f\n", H, G,
           r[0][RUNS / 2], r[1][RUNS / 2], r[2][RUNS / 2]);
    return 0;
}
