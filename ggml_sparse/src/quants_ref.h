/*
 * quants_ref.h - portable reference (de)quantization of contiguous rows.
 *
 * dequantize_row_X(x, y, n): n elements of type X at x -> floats at y.
 * quantize_row_X_ref(x, y, n): n floats at x -> blocks of type X at y.
 * n is always a multiple of the type's block size. These are the oracles
 * the SIMD kernels are tested against; they favour clarity over speed.
 */
#ifndef GS_QUANTS_REF_H
#define GS_QUANTS_REF_H

#include <stdint.h>

void gs_dequantize_row_f32(const void * x, float * y, int64_t n);
void gs_dequantize_row_f16(const void * x, float * y, int64_t n);
void gs_dequantize_row_bf16(const void * x, float * y, int64_t n);
void gs_dequantize_row_q4_0(const void * x, float * y, int64_t n);
void gs_dequantize_row_q4_1(const void * x, float * y, int64_t n);
void gs_dequantize_row_q5_0(const void * x, float * y, int64_t n);
void gs_dequantize_row_q5_1(const void * x, float * y, int64_t n);
void gs_dequantize_row_q8_0(const void * x, float * y, int64_t n);
void gs_dequantize_row_q8_1(const void * x, float * y, int64_t n);
void gs_dequantize_row_q4_K(const void * x, float * y, int64_t n);
void gs_dequantize_row_q5_K(const void * x, float * y, int64_t n);
void gs_dequantize_row_q6_K(const void * x, float * y, int64_t n);
void gs_dequantize_row_q8_K(const void * x, float * y, int64_t n);

void gs_quantize_row_f32_ref(const float * x, void * y, int64_t n);
void gs_quantize_row_f16_ref(const float * x, void * y, int64_t n);
void gs_quantize_row_bf16_ref(const float * x, void * y, int64_t n);
void gs_quantize_row_q4_0_ref(const float * x, void * y, int64_t n);
void gs_quantize_row_q4_1_ref(const float * x, void * y, int64_t n);
void gs_quantize_row_q5_0_ref(const float * x, void * y, int64_t n);
void gs_quantize_row_q5_1_ref(const float * x, void * y, int64_t n);
void gs_quantize_row_q8_0_ref(const float * x, void * y, int64_t n);
void gs_quantize_row_q8_1_ref(const float * x, void * y, int64_t n);
/* Q8_0 activations as the matmul quantizes them (see quants_ref.c). */
void gs_quantize_row_q8_0_act(const float * x, void * y, int64_t n);
void gs_quantize_row_q4_K_ref(const float * x, void * y, int64_t n);
void gs_quantize_row_q5_K_ref(const float * x, void * y, int64_t n);
void gs_quantize_row_q6_K_ref(const float * x, void * y, int64_t n);
void gs_quantize_row_q8_K_ref(const float * x, void * y, int64_t n);

/* Unpack the 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block. */
static inline void gs_get_scale_min_k4(int j, const uint8_t * q, uint8_t * sc, uint8_t * m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

#endif /* GS_QUANTS_REF_H */
