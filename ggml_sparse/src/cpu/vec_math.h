/*
 * vec_math.h - scalar math with llama.cpp's exact numerics.
 *
 * gs_expf_compat evaluates the same formula llama.cpp's CPU backend uses
 * for exp in softmax and SiLU (a reduction to 2^n * e^b with a degree-5
 * polynomial, after Arm's optimized-routines expf; max error about 1.5
 * ulp), operation for operation with fused multiply-adds, so that results
 * are bit-identical to it. Compile callers with FMA enabled (or accept the
 * slow libm fmaf): fmaf is exact either way.
 */
#ifndef GS_VEC_MATH_H
#define GS_VEC_MATH_H

#include <math.h>

static inline __attribute__((always_inline)) float gs_expf_compat(float x) {
    const float shift = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, shift);          /* x / ln 2, rounded  */
    const float n = z - shift;                                 /* integer part       */
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));  /* x - n ln 2 */
    if (fabsf(n) > 192.0f) return n > 0.0f ? INFINITY : 0.0f;
    const float u = b * b;
    const float p = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                         u, fmaf(0x1.ffffecp-1f, b, 1.0f));
    return ldexpf(p, (int) n);
}

/* x * sigmoid(x) as llama.cpp computes it: x / (1 + exp(-x)). */
static inline __attribute__((always_inline)) float gs_silu_compat(float x) {
    return x / (1.0f + gs_expf_compat(0.0f - x));
}

#endif /* GS_VEC_MATH_H */
