/*
 * quants_k_ref.c - reference dequantization of the K types (256-element
 * super-blocks: Q4_K, Q5_K, Q6_K, Q8_K) and the Q8_K activation quantizer.
 * The weight quantizers are in quants_k_ref_quantize.c.
 */
#include "gs_internal.h"
#include "quants_ref.h"

#include <math.h>

void gs_dequantize_row_q4_K(const void * vx, float * y, int64_t n) {
    const block_q4_K * x = vx;
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = gs_half_to_float(x[b].d);
        const float dmin = gs_half_to_float(x[b].dmin);
        const uint8_t * q = x[b].qs;
        for (int k = 0; k < 4; k++, q += 32) {
            uint8_t sc0, m0, sc1, m1;
            gs_get_scale_min_k4(2 * k, x[b].scales, &sc0, &m0);
            gs_get_scale_min_k4(2 * k + 1, x[b].scales, &sc1, &m1);
            for (int l = 0; l < 32; l++) *y++ = d * sc0 * (q[l] & 0xF) - dmin * m0;
            for (int l = 0; l < 32; l++) *y++ = d * sc1 * (q[l] >> 4) - dmin * m1;
        }
    }
}

void gs_dequantize_row_q5_K(const void * vx, float * y, int64_t n) {
    const block_q5_K * x = vx;
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = gs_half_to_float(x[b].d);
        const float dmin = gs_half_to_float(x[b].dmin);
        const uint8_t * q = x[b].qs;
        const uint8_t * qh = x[b].qh;
        for (int k = 0; k < 4; k++, q += 32) {
            uint8_t sc0, m0, sc1, m1;
            gs_get_scale_min_k4(2 * k, x[b].scales, &sc0, &m0);
            gs_get_scale_min_k4(2 * k + 1, x[b].scales, &sc1, &m1);
            for (int l = 0; l < 32; l++) {
                *y++ = d * sc0 * ((q[l] & 0xF) + (((qh[l] >> (2 * k)) & 1) << 4)) - dmin * m0;
            }
            for (int l = 0; l < 32; l++) {
                *y++ = d * sc1 * ((q[l] >> 4) + (((qh[l] >> (2 * k + 1)) & 1) << 4)) - dmin * m1;
            }
        }
    }
}

void gs_dequantize_row_q6_K(const void * vx, float * y, int64_t n) {
    const block_q6_K * x = vx;
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = gs_half_to_float(x[b].d);
        const uint8_t * ql = x[b].ql;
        const uint8_t * qh = x[b].qh;
        const int8_t * sc = x[b].scales;
        for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, y += 128) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = (int) ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = (int) ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = (int) ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = (int) ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}

void gs_dequantize_row_q8_K(const void * vx, float * y, int64_t n) {
    const block_q8_K * x = vx;
    for (int64_t b = 0; b < n / QK_K; b++) {
        for (int j = 0; j < QK_K; j++) *y++ = x[b].d * x[b].qs[j];
    }
}

void gs_quantize_row_q8_K_ref(const float * x, void * vy, int64_t n) {
    block_q8_K * y = vy;
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float amax = 0.0f, vmax = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); vmax = x[j]; }
        }
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof(y[b]));
            continue;
        }
        /* the extreme value maps to -128 or -127 (sign kept), as ggml does */
        const float iscale = -127.0f / vmax;
        for (int j = 0; j < QK_K; j++) {
            int v = (int) nearbyintf(iscale * x[j]);
            y[b].qs[j] = (int8_t) (v > 127 ? 127 : v);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[b].qs[16 * j + l];
            y[b].bsums[j] = (int16_t) sum;
        }
        y[b].d = 1.0f / iscale;
    }
}
