/*
 * quants_ref.c - reference (de)quantization for plain and 32-element block
 * types (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1).
 * The K types (256-element super-blocks) are in quants_k_ref.c.
 */
#include "gs_internal.h"
#include "quants_ref.h"

#include <math.h>

/* ---- plain types ------------------------------------------------------- */
void gs_dequantize_row_f32(const void * x, float * y, int64_t n) {
    memcpy(y, x, (size_t) n * sizeof(float));
}

void gs_quantize_row_f32_ref(const float * x, void * y, int64_t n) {
    memcpy(y, x, (size_t) n * sizeof(float));
}

void gs_dequantize_row_f16(const void * x, float * y, int64_t n) {
    const gs_half * h = x;
    for (int64_t i = 0; i < n; i++) y[i] = gs_half_to_float(h[i]);
}

void gs_quantize_row_f16_ref(const float * x, void * y, int64_t n) {
    gs_half * h = y;
    for (int64_t i = 0; i < n; i++) h[i] = gs_float_to_half(x[i]);
}

void gs_dequantize_row_bf16(const void * x, float * y, int64_t n) {
    const gs_bf16 * h = x;
    for (int64_t i = 0; i < n; i++) y[i] = gs_bf16_to_float(h[i]);
}

void gs_quantize_row_bf16_ref(const float * x, void * y, int64_t n) {
    gs_bf16 * h = y;
    for (int64_t i = 0; i < n; i++) h[i] = gs_float_to_bf16(x[i]);
}

/* ---- helpers ------------------------------------------------------------ */
/* The value of largest magnitude in x[0..n) (sign kept). */
static float max_abs_signed(const float * x, int n) {
    float amax = 0.0f, vmax = 0.0f;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            vmax = x[i];
        }
    }
    return vmax;
}

static void min_max(const float * x, int n, float * mn, float * mx) {
    float a = x[0], b = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < a) a = x[i];
        if (x[i] > b) b = x[i];
    }
    *mn = a;
    *mx = b;
}

/* ---- Q4_0 --------------------------------------------------------------- */
void gs_quantize_row_q4_0_ref(const float * x, void * vy, int64_t n) {
    block_q4_0 * y = vy;
    for (int64_t b = 0; b < n / QK4_0; b++, x += QK4_0) {
        /* the extreme value maps to -8 so the full range is used */
        const float vmax = max_abs_signed(x, QK4_0);
        const float d = vmax / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = gs_float_to_half(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            int q0 = (int) (x[j] * id + 8.5f);
            int q1 = (int) (x[j + QK4_0 / 2] * id + 8.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            y[b].qs[j] = (uint8_t) (q0 | (q1 << 4));
        }
    }
}

void gs_dequantize_row_q4_0(const void * vx, float * y, int64_t n) {
    const block_q4_0 * x = vx;
    for (int64_t b = 0; b < n / QK4_0; b++, y += QK4_0) {
        const float d = gs_half_to_float(x[b].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[j] = ((x[b].qs[j] & 0xF) - 8) * d;
            y[j + QK4_0 / 2] = ((x[b].qs[j] >> 4) - 8) * d;
        }
    }
}

/* ---- Q4_1 --------------------------------------------------------------- */
void gs_quantize_row_q4_1_ref(const float * x, void * vy, int64_t n) {
    block_q4_1 * y = vy;
    for (int64_t b = 0; b < n / QK4_1; b++, x += QK4_1) {
        float mn, mx;
        min_max(x, QK4_1, &mn, &mx);
        const float d = (mx - mn) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = gs_float_to_half(d);
        y[b].m = gs_float_to_half(mn);
        for (int j = 0; j < QK4_1 / 2; j++) {
            int q0 = (int) ((x[j] - mn) * id + 0.5f);
            int q1 = (int) ((x[j + QK4_1 / 2] - mn) * id + 0.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            y[b].qs[j] = (uint8_t) (q0 | (q1 << 4));
        }
    }
}

void gs_dequantize_row_q4_1(const void * vx, float * y, int64_t n) {
    const block_q4_1 * x = vx;
    for (int64_t b = 0; b < n / QK4_1; b++, y += QK4_1) {
        const float d = gs_half_to_float(x[b].d);
        const float m = gs_half_to_float(x[b].m);
        for (int j = 0; j < QK4_1 / 2; j++) {
            y[j] = (x[b].qs[j] & 0xF) * d + m;
            y[j + QK4_1 / 2] = (x[b].qs[j] >> 4) * d + m;
        }
    }
}

/* ---- Q5_0 --------------------------------------------------------------- */
void gs_quantize_row_q5_0_ref(const float * x, void * vy, int64_t n) {
    block_q5_0 * y = vy;
    for (int64_t b = 0; b < n / QK5_0; b++, x += QK5_0) {
        const float vmax = max_abs_signed(x, QK5_0);
        const float d = vmax / -16.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = gs_float_to_half(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            int q0 = (int) (x[j] * id + 16.5f);
            int q1 = (int) (x[j + QK5_0 / 2] * id + 16.5f);
            q0 = q0 > 31 ? 31 : q0;
            q1 = q1 > 31 ? 31 : q1;
            y[b].qs[j] = (uint8_t) ((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= (uint32_t) ((q0 >> 4) & 1) << j;
            qh |= (uint32_t) ((q1 >> 4) & 1) << (j + QK5_0 / 2);
        }
        memcpy(y[b].qh, &qh, 4);
    }
}

void gs_dequantize_row_q5_0(const void * vx, float * y, int64_t n) {
    const block_q5_0 * x = vx;
    for (int64_t b = 0; b < n / QK5_0; b++, y += QK5_0) {
        const float d = gs_half_to_float(x[b].d);
        uint32_t qh;
        memcpy(&qh, x[b].qh, 4);
        for (int j = 0; j < QK5_0 / 2; j++) {
            const int h0 = (qh >> j) & 1;
            const int h1 = (qh >> (j + QK5_0 / 2)) & 1;
            y[j] = (((x[b].qs[j] & 0xF) | (h0 << 4)) - 16) * d;
            y[j + QK5_0 / 2] = (((x[b].qs[j] >> 4) | (h1 << 4)) - 16) * d;
        }
    }
}

/* ---- Q5_1 --------------------------------------------------------------- */
void gs_quantize_row_q5_1_ref(const float * x, void * vy, int64_t n) {
    block_q5_1 * y = vy;
    for (int64_t b = 0; b < n / QK5_1; b++, x += QK5_1) {
        float mn, mx;
        min_max(x, QK5_1, &mn, &mx);
        const float d = (mx - mn) / 31.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = gs_float_to_half(d);
        y[b].m = gs_float_to_half(mn);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_1 / 2; j++) {
            const int q0 = (int) ((x[j] - mn) * id + 0.5f);
            const int q1 = (int) ((x[j + QK5_1 / 2] - mn) * id + 0.5f);
            y[b].qs[j] = (uint8_t) ((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= (uint32_t) ((q0 >> 4) & 1) << j;
            qh |= (uint32_t) ((q1 >> 4) & 1) << (j + QK5_1 / 2);
        }
        memcpy(y[b].qh, &qh, 4);
    }
}

void gs_dequantize_row_q5_1(const void * vx, float * y, int64_t n) {
    const block_q5_1 * x = vx;
    for (int64_t b = 0; b < n / QK5_1; b++, y += QK5_1) {
        const float d = gs_half_to_float(x[b].d);
        const float m = gs_half_to_float(x[b].m);
        uint32_t qh;
        memcpy(&qh, x[b].qh, 4);
        for (int j = 0; j < QK5_1 / 2; j++) {
            const int h0 = (qh >> j) & 1;
            const int h1 = (qh >> (j + QK5_1 / 2)) & 1;
            y[j] = ((x[b].qs[j] & 0xF) | (h0 << 4)) * d + m;
            y[j + QK5_1 / 2] = ((x[b].qs[j] >> 4) | (h1 << 4)) * d + m;
        }
    }
}

/* ---- Q8_0 / Q8_1 -------------------------------------------------------- */
void gs_quantize_row_q8_0_ref(const float * x, void * vy, int64_t n) {
    block_q8_0 * y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = gs_float_to_half(d);
        for (int j = 0; j < QK8_0; j++) y[b].qs[j] = (int8_t) roundf(x[j] * id);
    }
}

void gs_dequantize_row_q8_0(const void * vx, float * y, int64_t n) {
    const block_q8_0 * x = vx;
    for (int64_t b = 0; b < n / QK8_0; b++, y += QK8_0) {
        const float d = gs_half_to_float(x[b].d);
        for (int j = 0; j < QK8_0; j++) y[j] = x[b].qs[j] * d;
    }
}

/* Activation quantization (what the matmul applies to its F32 input) uses
 * the rule llama.cpp's x86 kernels use at run time, so that both engines
 * see the same integers: scale by 127/amax and round half to even. The
 * Q8_0 *weight* quantizer above keeps the file format's reference rule
 * (multiply by 1/d, round half away from zero) that gguf.quants follows. */
static inline float act_amax(const float * x) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    return amax;
}

void gs_quantize_row_q8_0_act(const float * x, void * vy, int64_t n) {
    block_q8_0 * y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        const float amax = act_amax(x);
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[b].d = gs_float_to_half(amax / 127.0f);
        for (int j = 0; j < QK8_0; j++) y[b].qs[j] = (int8_t) nearbyintf(x[j] * id);
    }
}

void gs_quantize_row_q8_1_ref(const float * x, void * vy, int64_t n) {
    block_q8_1 * y = vy;
    for (int64_t b = 0; b < n / QK8_1; b++, x += QK8_1) {
        const float amax = act_amax(x);
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) {
            y[b].qs[j] = (int8_t) nearbyintf(x[j] * id);
            sum += y[b].qs[j];
        }
        y[b].d = gs_float_to_half(d);
        y[b].s = gs_float_to_half(d * (float) sum);
    }
}

void gs_dequantize_row_q8_1(const void * vx, float * y, int64_t n) {
    const block_q8_1 * x = vx;
    for (int64_t b = 0; b < n / QK8_1; b++, y += QK8_1) {
        const float d = gs_half_to_float(x[b].d);
        for (int j = 0; j < QK8_1; j++) y[j] = x[b].qs[j] * d;
    }
}
