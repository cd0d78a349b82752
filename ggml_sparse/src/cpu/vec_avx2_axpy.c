/*
 * vec_avx2_axpy.c - AVX2 row axpy kernels of the sparse down projection
 * (gs_axpy_row_fn): y[0..n) += a * x[0..n), x a slice of a weight row of
 * one type, dequantized in registers; per block (a * d) * q with fused
 * multiply-adds over 8 weights (Q4_1/Q5_1: y + a * m first).
 */
#include "sparse.h"

#include <immintrin.h>
#include <math.h>

static void axpy_f32(int n, float a, const void * vx, float * y) {
    const float * x = vx;
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

static void axpy_f16(int n, float a, const void * vx, float * y) {
    const uint16_t * x = vx;
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 w = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (x + i)));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, w, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] = fmaf(a, GS_H2F(x[i]), y[i]);
}

static void axpy_bf16(int n, float a, const void * vx, float * y) {
    const uint16_t * x = vx;
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *) (x + i)));
        const __m256 w = _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, w, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] = fmaf(a, gs_bf16_to_float(x[i]), y[i]);
}

/* y[0..32) = s * q + y, q[k] the block's integer weights 8k..8k+7 */
static inline void fma_block(float * y, __m256 s, const __m256i q[4]) {
    for (int k = 0; k < 4; k++) {
        _mm256_storeu_ps(y + 8 * k, _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(q[k]), _mm256_loadu_ps(y + 8 * k)));
    }
}

static inline void add_offset(float * y, __m256 m) {
    for (int k = 0; k < 4; k++) _mm256_storeu_ps(y + 8 * k, _mm256_add_ps(_mm256_loadu_ps(y + 8 * k), m));
}

/* the 32 nibbles of qs: low nibbles are weights 0..15, high ones 16..31 */
static inline void nibbles(const uint8_t * qs, __m256i q[4]) {
    const __m128i v = _mm_loadu_si128((const __m128i *) qs);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
    q[0] = _mm256_cvtepu8_epi32(lo);
    q[1] = _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8));
    q[2] = _mm256_cvtepu8_epi32(hi);
    q[3] = _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8));
}

/* fifth bits: weight j gets +16 when bit j of qh is set */
static inline void high_bits(const uint8_t * qh, __m256i q[4]) {
    uint32_t h;
    memcpy(&h, qh, sizeof(h));
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i sixteen = _mm256_set1_epi32(16);
    for (int k = 0; k < 4; k++) {
        const __m256i b = _mm256_and_si256(_mm256_set1_epi32((int) ((h >> (8 * k)) & 0xFF)), bit);
        q[k] = _mm256_add_epi32(q[k], _mm256_and_si256(_mm256_cmpeq_epi32(b, bit), sixteen));
    }
}

static inline void offset_q(__m256i q[4], int off) {
    const __m256i o = _mm256_set1_epi32(off);
    for (int k = 0; k < 4; k++) q[k] = _mm256_sub_epi32(q[k], o);
}

static void axpy_q4_0(int n, float a, const void * vx, float * y) {
    const block_q4_0 * x = vx;
    for (int b = 0; b < n / QK4_0; b++, y += QK4_0) {
        __m256i q[4];
        nibbles(x[b].qs, q);
        offset_q(q, 8);
        fma_block(y, _mm256_set1_ps(a * GS_H2F(x[b].d)), q);
    }
}

static void axpy_q4_1(int n, float a, const void * vx, float * y) {
    const block_q4_1 * x = vx;
    for (int b = 0; b < n / QK4_1; b++, y += QK4_1) {
        __m256i q[4];
        nibbles(x[b].qs, q);
        add_offset(y, _mm256_set1_ps(a * GS_H2F(x[b].m)));
        fma_block(y, _mm256_set1_ps(a * GS_H2F(x[b].d)), q);
    }
}

static void axpy_q5_0(int n, float a, const void * vx, float * y) {
    const block_q5_0 * x = vx;
    for (int b = 0; b < n / QK5_0; b++, y += QK5_0) {
        __m256i q[4];
        nibbles(x[b].qs, q);
        high_bits(x[b].qh, q);
        offset_q(q, 16);
        fma_block(y, _mm256_set1_ps(a * GS_H2F(x[b].d)), q);
    }
}

static void axpy_q5_1(int n, float a, const void * vx, float * y) {
    const block_q5_1 * x = vx;
    for (int b = 0; b < n / QK5_1; b++, y += QK5_1) {
        __m256i q[4];
        nibbles(x[b].qs, q);
        high_bits(x[b].qh, q);
        add_offset(y, _mm256_set1_ps(a * GS_H2F(x[b].m)));
        fma_block(y, _mm256_set1_ps(a * GS_H2F(x[b].d)), q);
    }
}

static void axpy_q8_0(int n, float a, const void * vx, float * y) {
    const block_q8_0 * x = vx;
    for (int b = 0; b < n / QK8_0; b++, y += QK8_0) {
        __m256i q[4];
        for (int k = 0; k < 4; k++) q[k] = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *) (x[b].qs + 8 * k)));
        fma_block(y, _mm256_set1_ps(a * GS_H2F(x[b].d)), q);
    }
}

const gs_axpy_row_fn gs_axpy_rows_avx2[GS_TYPE_COUNT] = {
    [GS_TYPE_F32]  = axpy_f32,
    [GS_TYPE_F16]  = axpy_f16,
    [GS_TYPE_BF16] = axpy_bf16,
    [GS_TYPE_Q4_0] = axpy_q4_0,
    [GS_TYPE_Q4_1] = axpy_q4_1,
    [GS_TYPE_Q5_0] = axpy_q5_0,
    [GS_TYPE_Q5_1] = axpy_q5_1,
    [GS_TYPE_Q8_0] = axpy_q8_0,
};
