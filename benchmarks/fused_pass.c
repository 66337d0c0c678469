/* How fast can the LSTM's fused element-wise pass run, alone on one core?
 *
 * Each step of an LSTM kernel activates its four gates (three sigmoids, two
 * tanh with c') for every unit of every row (``cell_unit`` in
 * src_ext/lstm.pyx, the activations of src_ext/_vmath.h). This times that
 * pass alone, its data in L1, the way the kernels compile it: the header's
 * activations, and the same with the exp polynomial evaluated by Estrin's
 * scheme (depth 3 instead of 7; the same Taylor coefficients), which would
 * help only if the pass were bound by the polynomial's latency rather than
 * by its instruction count. The two alternate over 15 runs; medians.
 *
 * Build (x86-64-v4 as the kernels' AVX-512 build) and run from the
 * repository root:
 *   gcc -O3 -march=x86-64-v4 -I src_ext benchmarks/fused_pass.c -o /tmp/fused_pass -lm
 *   taskset -c 0 /tmp/fused_pass B H     # e.g. 4 64: a half of the grid's long batch
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "_vmath.h"
#include "harness.h"

#define RUNS 15
#define CALLS 20000

static inline float estrin_expf(float x)
{
    x = x > 89.0f ? 89.0f : x;
    x = x < -87.0f ? -87.0f : x;
    float t = x * 1.44269504088896341f;
    float nf = (t + 12582912.0f) - 12582912.0f;
    float r = x - nf * 0.693359375f;
    r = r + nf * 2.12194440e-4f;
    float r2 = r * r, r4 = r2 * r2;
    float p01 = 1.0f + r, p23 = 0.5f + r * (1.0f / 6.0f);
    float p45 = 1.0f / 24.0f + r * (1.0f / 120.0f);
    float p67 = 1.0f / 720.0f + r * (1.0f / 5040.0f);
    float p = (p01 + r2 * p23) + r4 * (p45 + r2 * p67);
    union { uint32_t u; float f; } scale;
    scale.u = (uint32_t)((int32_t)nf + 127) << 23;
    return p * scale.f;
}

static inline float estrin_sigmoidf(float x) { return 1.0f / (1.0f + estrin_expf(-x)); }

static inline float estrin_tanhf(float x)
{
    float ax = x < 0.0f ? -x : x;
    float big = 1.0f - 2.0f / (1.0f + estrin_expf(2.0f * ax));
    float x2 = x * x, x4 = x2 * x2;
    float small = ax * ((1.0f - x2 * (1.0f / 3.0f)) + x4 * ((2.0f / 15.0f - x2 * (17.0f / 315.0f))
                                                            + x4 * (62.0f / 2835.0f)));
    float y = ax < 0.25f ? small : big;
    return x < 0.0f ? -y : y;
}

/* one step's pass over B rows of H units, as cell_unit: g holds the input
 * projection, gh the recurrent product; g gets the activated gates */
#define FUSED_PASS(NAME, SIGMOID, TANH)                                                  \
    __attribute__((noinline)) static void NAME(float* restrict g, const float* restrict gh,\
                                               const float* restrict c_in,              \
                                               float* restrict c_out, float* restrict h,\
                                               int B, int H)                            \
    {                                                                                   \
        for (int b = 0; b < B; b++) {                                                   \
            float* gb = g + b * 4 * H;                                                  \
            const float* hb = gh + b * 4 * H;                                           \
            for (int j = 0; j < H; j++) {                                               \
                float i_ = SIGMOID(gb[j] + hb[j]);                                      \
                float f_ = SIGMOID(gb[H + j] + hb[H + j]);                              \
                float g_ = TANH(gb[2 * H + j] + hb[2 * H + j]);                         \
                float o_ = SIGMOID(gb[3 * H + j] + hb[3 * H + j]);                      \
                gb[j] = i_, gb[H + j] = f_, gb[2 * H + j] = g_, gb[3 * H + j] = o_;     \
                float c = f_ * c_in[b * H + j] + i_ * g_;                               \
                c_out[b * H + j] = c;                                                   \
                h[b * H + j] = o_ * TANH(c);                                            \
            }                                                                           \
        }                                                                               \
    }
FUSED_PASS(pass_header, fr_sigmoidf, fr_tanhf)
FUSED_PASS(pass_estrin, estrin_sigmoidf, estrin_tanhf)

int main(int argc, char** argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s B H\n", argv[0]);
        return 2;
    }
    int B = atoi(argv[1]), H = atoi(argv[2]);
    float* g = malloc(sizeof(float) * 4 * B * H);
    float* gh = malloc(sizeof(float) * 4 * B * H);
    float* c = malloc(sizeof(float) * B * H);
    float* c_out = malloc(sizeof(float) * B * H);
    float* h = malloc(sizeof(float) * B * H);
    srand(1);
    for (int i = 0; i < 4 * B * H; i++) {
        g[i] = 8.0f * ((float)rand() / RAND_MAX - 0.5f);
        gh[i] = (float)rand() / RAND_MAX - 0.5f;
    }
    for (int i = 0; i < B * H; i++)
        c[i] = (float)rand() / RAND_MAX - 0.5f;
    double header[RUNS], estrin[RUNS];
    for (int r = 0; r < RUNS; r++) {
        /* g takes the activated gates each call; the timing does not depend
         * on the values (no branches) */
        double t0 = now();
        for (int n = 0; n < CALLS; n++)
            pass_header(g, gh, c, c_out, h, B, H);
        header[r] = (now() - t0) / CALLS;
        t0 = now();
        for (int n = 0; n < CALLS; n++)
            pass_estrin(g, gh, c, c_out, h, B, H);
        estrin[r] = (now() - t0) / CALLS;
    }
    qsort(header, RUNS, sizeof(double), by_value);
    qsort(estrin, RUNS, sizeof(double), by_value);
    double a = header[RUNS / 2], e = estrin[RUNS / 2];
    printf("B=%d H=%d: header %.3f us/step (%.2f ns a unit), Estrin %.3f us/step (header/Estrin %.2f)\n",
           B, H, a * 1e6, a * 1e9 / (B * H), e * 1e6, a / e);
    free(g), free(gh), free(c), free(c_out), free(h);
    return 0;
}
