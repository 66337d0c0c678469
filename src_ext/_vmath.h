/* Branch-free float32 exp, sigmoid and tanh that GCC and Clang vectorise.
 *
 * libm's expf/tanhf are scalar calls, and the fused element-wise passes spend
 * most of their time in them. These are plain arithmetic on one float, so a
 * loop over them compiles to SIMD code.
 *
 * Error (measured against float64 over [-100, 100] by tests/test_vmath.py):
 *   fr_expf     relative <= 3 ulp on [-87, 88.38] (Cody-Waite reduction to
 *               |r| <= ln2/2, then a degree-7 Taylor polynomial whose truncation
 *               error is < 6e-9); +inf above
 *   fr_sigmoidf absolute <= 1.5e-7
 *   fr_tanhf    absolute <= 2.5e-7
 * NaN propagates: every clamp is written so that a NaN compares false and passes.
 */
#ifndef FASTRNN_VMATH_H
#define FASTRNN_VMATH_H
#include <stdint.h>

static inline float fr_expf(float x)
{
    /* above 88.38 n = 128 and 2^n is +inf: the result overflows to +inf as e^x
     * does from 88.72, so sigmoid(-x) is exactly 0 there (not a subnormal) and
     * sigmoid(-inf) = 0 as IEEE arithmetic has it. Below -87 the result is
     * under FLT_MIN, so 2^n stays normal. */
    x = x > 89.0f ? 89.0f : x;
    x = x < -87.0f ? -87.0f : x;
    float t = x * 1.44269504088896341f;              /* x / ln2 */
    /* round to nearest by the 1.5 * 2^23 trick: |t| < 128, and no select, whose
     * branch stopped GCC 12 from vectorising the loop for AVX2 targets */
    float nf = (t + 12582912.0f) - 12582912.0f;
    /* ln2 split so that nf * ln2_hi is exact */
    float r = x - nf * 0.693359375f;
    r = r + nf * 2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { uint32_t u; float f; } scale;          /* 2^n, built in the exponent bits */
    scale.u = (uint32_t)((int32_t)nf + 127) << 23;
    return p * scale.f;
}

static inline float fr_sigmoidf(float x)
{
    /* no cancellation anywhere: the relative error is that of fr_expf */
    return 1.0f / (1.0f + fr_expf(-x));
}

static inline float fr_tanhf(float x)
{
    float ax = x < 0.0f ? -x : x;
    /* large |x|: 1 - 2/(1+e^{2|x|}), whose cancellation costs little above 1/4 */
    float big = 1.0f - 2.0f / (1.0f + fr_expf(2.0f * ax));
    /* small |x|: odd Taylor series; the first omitted term is < 1e-8 * |x| */
    float x2 = x * x;
    float small = ax * (1.0f + x2 * (-1.0f / 3.0f + x2 * (2.0f / 15.0f + x2 *
                  (-17.0f / 315.0f + x2 * (62.0f / 2835.0f)))));
    float y = ax < 0.25f ? small : big;
    return x < 0.0f ? -y : y;
}
#endif
