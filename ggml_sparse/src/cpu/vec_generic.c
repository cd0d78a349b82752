/*
 * vec_generic.c - scalar reference kernels: activation quantizers and dot
 * products of one weight row with one activation row, for every type.
 * The SIMD kernels (vec_avx2.c, vec_avx512.c) are tested against these.
 */
#include "../gs_internal.h"
#include "../quants_ref.h"

#include <math.h>

static void vec_dot_f32(int n, float * s, const void * vx, const void * vy) {
    const float * x = vx, * y = vy;
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double) x[i] * y[i];
    *s = (float) sum;
}

static void vec_dot_f16(int n, float * s, const void * vx, const void * vy) {
    const gs_half * x = vx;
    const float * y = vy;
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double) GS_H2F(x[i]) * y[i];
    *s = (float) sum;
}

static void vec_dot_bf16(int n, float * s, const void * vx, const void * vy) {
    const gs_bf16 * x = vx;
    const float * y = vy;
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double) gs_bf16_to_float(x[i]) * y[i];
    *s = (float) sum;
}

/* ---- 32-element block types ----------------------------------------------
 * The accumulation order is part of the contract: it equals llama.cpp's x86
 * kernels bit for bit, so both engines produce the same logits (a last-bit
 * difference flips activation quantization downstream and, over a few
 * dozen layers, can change the greedy token). Eight float lanes; lane l
 * takes the integer sum of the products of elements 4l..4l+3 of each block,
 * times d_x*d_y, with one fused multiply-add per block; the lanes are then
 * summed as ((0+4)+(2+6)) + ((1+5)+(3+7)). Types with a min (Q4_1, Q5_1)
 * add sum over blocks of m_x*s_y, accumulated separately in block order. */
static inline void lanes_fma(float * acc, float d, const int8_t * qx, const int8_t * qy) {
    for (int l = 0; l < 8; l++) {
        const int isum = qx[4 * l] * qy[4 * l] + qx[4 * l + 1] * qy[4 * l + 1] +
                         qx[4 * l + 2] * qy[4 * l + 2] + qx[4 * l + 3] * qy[4 * l + 3];
        acc[l] = fmaf(d, (float) isum, acc[l]);
    }
}

static inline float lanes_sum(const float * a) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

/* Element j < 16 is the low nibble of qs[j], element j + 16 the high one;
 * bit j of qh (if any) is element j's fifth bit; `offset` is subtracted. */
static inline void unpack_32(const uint8_t * qs, const uint8_t * qh, int offset, int8_t * q) {
    uint32_t h = 0;
    if (qh) memcpy(&h, qh, 4);
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t) (((qs[j] & 0xF) | (((h >> j) & 1) << 4)) - offset);
        q[j + 16] = (int8_t) (((qs[j] >> 4) | (((h >> (j + 16)) & 1) << 4)) - offset);
    }
}

static void vec_dot_q4_0(int n, float * s, const void * vx, const void * vy) {
    const block_q4_0 * x = vx;
    const block_q8_0 * y = vy;
    float acc[8] = { 0 };
    int8_t q[32];
    for (int b = 0; b < n / QK4_0; b++) {
        unpack_32(x[b].qs, NULL, 8, q);
        lanes_fma(acc, GS_H2F(x[b].d) * GS_H2F(y[b].d), q, y[b].qs);
    }
    *s = lanes_sum(acc);
}

static void vec_dot_q4_1(int n, float * s, const void * vx, const void * vy) {
    const block_q4_1 * x = vx;
    const block_q8_1 * y = vy;
    float acc[8] = { 0 }, summs = 0.0f;
    int8_t q[32];
    for (int b = 0; b < n / QK4_1; b++) {
        /* sum_i (d q_i + m) yd yq_i = d yd sum q_i yq_i + m * s_y */
        summs += GS_H2F(x[b].m) * GS_H2F(y[b].s);
        unpack_32(x[b].qs, NULL, 0, q);
        lanes_fma(acc, GS_H2F(x[b].d) * GS_H2F(y[b].d), q, y[b].qs);
    }
    *s = lanes_sum(acc) + summs;
}

static void vec_dot_q5_0(int n, float * s, const void * vx, const void * vy) {
    const block_q5_0 * x = vx;
    const block_q8_0 * y = vy;
    float acc[8] = { 0 };
    int8_t q[32];
    for (int b = 0; b < n / QK5_0; b++) {
        unpack_32(x[b].qs, x[b].qh, 16, q);
        lanes_fma(acc, GS_H2F(x[b].d) * GS_H2F(y[b].d), q, y[b].qs);
    }
    *s = lanes_sum(acc);
}

static void vec_dot_q5_1(int n, float * s, const void * vx, const void * vy) {
    const block_q5_1 * x = vx;
    const block_q8_1 * y = vy;
    float acc[8] = { 0 }, summs = 0.0f;
    int8_t q[32];
    for (int b = 0; b < n / QK5_1; b++) {
        summs += GS_H2F(x[b].m) * GS_H2F(y[b].s);
        unpack_32(x[b].qs, x[b].qh, 0, q);
        lanes_fma(acc, GS_H2F(x[b].d) * GS_H2F(y[b].d), q, y[b].qs);
    }
    *s = lanes_sum(acc) + summs;
}

static void vec_dot_q8_0(int n, float * s, const void * vx, const void * vy) {
    const block_q8_0 * x = vx;
    const block_q8_0 * y = vy;
    float acc[8] = { 0 };
    for (int b = 0; b < n / QK8_0; b++) lanes_fma(acc, GS_H2F(x[b].d) * GS_H2F(y[b].d), x[b].qs, y[b].qs);
    *s = lanes_sum(acc);
}

/* K types: the activation row is Q8_K (d, qs[256], bsums[16] = sums of 16
 * consecutive qs). Integer sums per sub-block; the float scales are applied
 * once per super-block. */

/* sum_i (d sc_j q_i - dmin m_j) yd yq_i
 *   = d yd sum_j sc_j (sum_{i in j} q_i yq_i) - dmin yd sum_j m_j (sum_{i in j} yq_i),
 * the last inner sum being two bsums (sub-blocks of 32). */
static void vec_dot_q4_K(int n, float * s, const void * vx, const void * vy) {
    const block_q4_K * x = vx;
    const block_q8_K * y = vy;
    float sum = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        int sum_q = 0, sum_m = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            gs_get_scale_min_k4(j, x[b].scales, &sc, &m);
            /* sub-block j: nibble (j % 2) of qs[32 * (j / 2) .. + 31] */
            const uint8_t * q = x[b].qs + 32 * (j / 2);
            const int8_t * yq = y[b].qs + 32 * j;
            const int shift = 4 * (j % 2);
            int acc = 0;
            for (int l = 0; l < 32; l++) acc += ((q[l] >> shift) & 0xF) * yq[l];
            sum_q += sc * acc;
            sum_m += m * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        }
        sum += y[b].d * (GS_H2F(x[b].d) * sum_q - GS_H2F(x[b].dmin) * sum_m);
    }
    *s = sum;
}

/* As Q4_K, with the fifth bit of weight 32 j + l in bit j of qh[l]. */
static void vec_dot_q5_K(int n, float * s, const void * vx, const void * vy) {
    const block_q5_K * x = vx;
    const block_q8_K * y = vy;
    float sum = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        int sum_q = 0, sum_m = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            gs_get_scale_min_k4(j, x[b].scales, &sc, &m);
            const uint8_t * q = x[b].qs + 32 * (j / 2);
            const int8_t * yq = y[b].qs + 32 * j;
            const int shift = 4 * (j % 2);
            int acc = 0;
            for (int l = 0; l < 32; l++) {
                const int v = ((q[l] >> shift) & 0xF) | (((x[b].qh[l] >> j) & 1) << 4);
                acc += v * yq[l];
            }
            sum_q += sc * acc;
            sum_m += m * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        }
        sum += y[b].d * (GS_H2F(x[b].d) * sum_q - GS_H2F(x[b].dmin) * sum_m);
    }
    *s = sum;
}

/* sum_i d sc_j (q_i - 32) yd yq_i over sub-blocks j of 16; q unpacked as
 * the layout comment of block_q6_K says. */
static void vec_dot_q6_K(int n, float * s, const void * vx, const void * vy) {
    const block_q6_K * x = vx;
    const block_q8_K * y = vy;
    float sum = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        int8_t q[QK_K];   /* codes - 32, in weight order */
        for (int h = 0; h < 2; h++) {
            const uint8_t * ql = x[b].ql + 64 * h;
            const uint8_t * qh = x[b].qh + 32 * h;
            int8_t * qo = q + 128 * h;
            for (int l = 0; l < 32; l++) {
                qo[l] = (int8_t) (((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
                qo[l + 32] = (int8_t) (((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                qo[l + 64] = (int8_t) (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                qo[l + 96] = (int8_t) (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        int sum_q = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            int acc = 0;
            for (int l = 0; l < 16; l++) acc += q[16 * j + l] * y[b].qs[16 * j + l];
            sum_q += x[b].scales[j] * acc;
        }
        sum += GS_H2F(x[b].d) * y[b].d * sum_q;
    }
    *s = sum;
}

const gs_cpu_type_funcs gs_cpu_funcs_scalar[GS_TYPE_COUNT] = {
    [GS_TYPE_F32]  = { gs_quantize_row_f32_ref,  vec_dot_f32,  gs_dequantize_row_f32 },
    [GS_TYPE_F16]  = { gs_quantize_row_f32_ref,  vec_dot_f16,  gs_dequantize_row_f16 },
    [GS_TYPE_BF16] = { gs_quantize_row_f32_ref,  vec_dot_bf16, gs_dequantize_row_bf16 },
    [GS_TYPE_Q4_0] = { gs_quantize_row_q8_0_act, vec_dot_q4_0, gs_dequantize_row_q4_0 },
    [GS_TYPE_Q4_1] = { gs_quantize_row_q8_1_ref, vec_dot_q4_1, gs_dequantize_row_q4_1 },
    [GS_TYPE_Q5_0] = { gs_quantize_row_q8_0_act, vec_dot_q5_0, gs_dequantize_row_q5_0 },
    [GS_TYPE_Q5_1] = { gs_quantize_row_q8_1_ref, vec_dot_q5_1, gs_dequantize_row_q5_1 },
    [GS_TYPE_Q8_0] = { gs_quantize_row_q8_0_act, vec_dot_q8_0, gs_dequantize_row_q8_0 },
    [GS_TYPE_Q8_1] = { gs_quantize_row_q8_1_ref, NULL,         gs_dequantize_row_q8_1 },
    [GS_TYPE_Q4_K] = { gs_quantize_row_q8_K_ref, vec_dot_q4_K, gs_dequantize_row_q4_K },
    [GS_TYPE_Q5_K] = { gs_quantize_row_q8_K_ref, vec_dot_q5_K, gs_dequantize_row_q5_K },
    [GS_TYPE_Q6_K] = { gs_quantize_row_q8_K_ref, vec_dot_q6_K, gs_dequantize_row_q6_K },
    [GS_TYPE_Q8_K] = { gs_quantize_row_q8_K_ref, NULL,         gs_dequantize_row_q8_K },
};
