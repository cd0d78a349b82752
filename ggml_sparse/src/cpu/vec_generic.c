/*
 * vec_generic.c - scalar reference kernels: activation quantizers and dot
 * products of one weight row with one activation row, for every type.
 * The SIMD kernels (vec_avx2.c, vec_avx512.c) are tested against these.
 */
#include "../gs_internal.h"
#include "../quants_ref.h"

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

static void vec_dot_q4_0(int n, float * s, const void * vx, const void * vy) {
    const block_q4_0 * x = vx;
    const block_q8_0 * y = vy;
    float sum = 0.0f;
    for (int b = 0; b < n / QK4_0; b++) {
        int acc = 0;
        for (int j = 0; j < QK4_0 / 2; j++) {
            acc += ((x[b].qs[j] & 0xF) - 8) * y[b].qs[j];
            acc += ((x[b].qs[j] >> 4) - 8) * y[b].qs[j + QK4_0 / 2];
        }
        sum += acc * GS_H2F(x[b].d) * GS_H2F(y[b].d);
    }
    *s = sum;
}

static void vec_dot_q4_1(int n, float * s, const void * vx, const void * vy) {
    const block_q4_1 * x = vx;
    const block_q8_1 * y = vy;
    float sum = 0.0f;
    for (int b = 0; b < n / QK4_1; b++) {
        int acc = 0;
        for (int j = 0; j < QK4_1 / 2; j++) {
            acc += (x[b].qs[j] & 0xF) * y[b].qs[j];
            acc += (x[b].qs[j] >> 4) * y[b].qs[j + QK4_1 / 2];
        }
        /* sum_i (d q_i + m) yd yq_i = d yd acc + m * (yd sum yq) */
        sum += acc * GS_H2F(x[b].d) * y[b].d + GS_H2F(x[b].m) * y[b].s;
    }
    *s = sum;
}

static void vec_dot_q5_0(int n, float * s, const void * vx, const void * vy) {
    const block_q5_0 * x = vx;
    const block_q8_0 * y = vy;
    float sum = 0.0f;
    for (int b = 0; b < n / QK5_0; b++) {
        uint32_t qh;
        memcpy(&qh, x[b].qh, 4);
        int acc = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            const int q0 = ((x[b].qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - 16;
            const int q1 = ((x[b].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            acc += q0 * y[b].qs[j] + q1 * y[b].qs[j + QK5_0 / 2];
        }
        sum += acc * GS_H2F(x[b].d) * GS_H2F(y[b].d);
    }
    *s = sum;
}

static void vec_dot_q5_1(int n, float * s, const void * vx, const void * vy) {
    const block_q5_1 * x = vx;
    const block_q8_1 * y = vy;
    float sum = 0.0f;
    for (int b = 0; b < n / QK5_1; b++) {
        uint32_t qh;
        memcpy(&qh, x[b].qh, 4);
        int acc = 0;
        for (int j = 0; j < QK5_1 / 2; j++) {
            const int q0 = (x[b].qs[j] & 0xF) | (((qh >> j) & 1) << 4);
            const int q1 = (x[b].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            acc += q0 * y[b].qs[j] + q1 * y[b].qs[j + QK5_1 / 2];
        }
        sum += acc * GS_H2F(x[b].d) * y[b].d + GS_H2F(x[b].m) * y[b].s;
    }
    *s = sum;
}

static void vec_dot_q8_0(int n, float * s, const void * vx, const void * vy) {
    const block_q8_0 * x = vx;
    const block_q8_0 * y = vy;
    float sum = 0.0f;
    for (int b = 0; b < n / QK8_0; b++) {
        int acc = 0;
        for (int j = 0; j < QK8_0; j++) acc += x[b].qs[j] * y[b].qs[j];
        sum += acc * GS_H2F(x[b].d) * GS_H2F(y[b].d);
    }
    *s = sum;
}

const gs_cpu_type_funcs gs_cpu_funcs_scalar[GS_TYPE_COUNT] = {
    [GS_TYPE_F32]  = { gs_quantize_row_f32_ref,  vec_dot_f32,  gs_dequantize_row_f32 },
    [GS_TYPE_F16]  = { gs_quantize_row_f32_ref,  vec_dot_f16,  gs_dequantize_row_f16 },
    [GS_TYPE_BF16] = { gs_quantize_row_f32_ref,  vec_dot_bf16, gs_dequantize_row_bf16 },
    [GS_TYPE_Q4_0] = { gs_quantize_row_q8_0_ref, vec_dot_q4_0, gs_dequantize_row_q4_0 },
    [GS_TYPE_Q4_1] = { gs_quantize_row_q8_1_ref, vec_dot_q4_1, gs_dequantize_row_q4_1 },
    [GS_TYPE_Q5_0] = { gs_quantize_row_q8_0_ref, vec_dot_q5_0, gs_dequantize_row_q5_0 },
    [GS_TYPE_Q5_1] = { gs_quantize_row_q8_1_ref, vec_dot_q5_1, gs_dequantize_row_q5_1 },
    [GS_TYPE_Q8_0] = { gs_quantize_row_q8_0_ref, vec_dot_q8_0, gs_dequantize_row_q8_0 },
    [GS_TYPE_Q8_1] = { gs_quantize_row_q8_1_ref, NULL,         gs_dequantize_row_q8_1 },
    [GS_TYPE_Q4_K] = { gs_quantize_row_q8_K_ref, NULL,         gs_dequantize_row_q4_K },
    [GS_TYPE_Q5_K] = { gs_quantize_row_q8_K_ref, NULL,         gs_dequantize_row_q5_K },
    [GS_TYPE_Q6_K] = { gs_quantize_row_q8_K_ref, NULL,         gs_dequantize_row_q6_K },
    [GS_TYPE_Q8_K] = { gs_quantize_row_q8_K_ref, NULL,         gs_dequantize_row_q8_K },
};
