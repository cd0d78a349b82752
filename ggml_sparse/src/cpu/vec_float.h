/*
 * vec_float.h - scalar pieces of the F32 / F16 / BF16 dot products shared
 * by the scalar kernels (vec_generic.c) and the SIMD ones: the lane sum and
 * the element tails. The order of float operations they fix is described
 * in vec_generic.c; every level must follow it to give the same bits.
 * Compile with -ffp-contract=off (a product and a sum written apart must
 * stay apart).
 */
#ifndef GS_VEC_FLOAT_H
#define GS_VEC_FLOAT_H

#include "../gs_internal.h"

#include <math.h>

/* Sum of 16 lanes: h_i = a_i + a_i+8, q_i = h_i + h_i+4, then
 * (q_0 + q_2) + (q_1 + q_3). */
static inline float gs_sum16(const float * a) {
    float h[8], q[4];
    for (int i = 0; i < 8; i++) h[i] = a[i + 8] + a[i];
    for (int i = 0; i < 4; i++) q[i] = h[i + 4] + h[i];
    return (q[0] + q[2]) + (q[1] + q[3]);
}

/* F32 elements np..n-1 added to sum: the first (n - np) / 8 * 8 as a
 * rounded product then a rounded add, the rest by fused multiply-adds. */
static inline float gs_f32_tail(const float * x, const float * y, int np, int n, float sum) {
    const int nv = np + (n - np) / 8 * 8;
    for (int i = np; i < nv; i++) {
        const float p = x[i] * y[i];
        sum += p;
    }
    for (int i = nv; i < n; i++) sum = fmaf(x[i], y[i], sum);
    return sum;
}

/* F16 elements np..n-1: their products (exact in float) added in double. */
static inline float gs_f16_tail(const gs_half * x, const gs_half * y, int np, int n, double sum) {
    for (int i = np; i < n; i++) sum += (double) (GS_H2F(x[i]) * GS_H2F(y[i]));
    return (float) sum;
}

/* BF16 elements np..n-1: their products added in double. */
static inline float gs_bf16_tail(const gs_bf16 * x, const gs_bf16 * y, int np, int n, double sum) {
    for (int i = np; i < n; i++) sum += (double) (gs_bf16_to_float(x[i]) * gs_bf16_to_float(y[i]));
    return (float) sum;
}

#endif /* GS_VEC_FLOAT_H */
