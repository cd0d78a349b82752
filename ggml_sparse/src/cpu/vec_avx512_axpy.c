/*
 * vec_avx512_axpy.c - AVX-512 row axpy kernels of the sparse down
 * projection (gs_axpy_row_fn): y[0..n) += a * x[0..n) with x a slice of a
 * weight row of one type, dequantized in registers. For a block with scale d
 * the kernels add (a * d) * q with one fused multiply-add per 16 weights
 * (Q4_1/Q5_1: y + a * m first), so results differ from the reference path
 * (dequantize, multiply, add) by rounding only.
 */
#include "sparse.h"

#include <immintrin.h>

static inline __mmask16 tail_mask(int r) {
    return (__mmask16) ((1u << r) - 1u);
}

static void axpy_f32(int n, float a, const void * vx, float * y) {
    const float * x = vx;
    const __m512 va = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    }
    if (i < n) {
        const __mmask16 k = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, k, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, y + i)));
    }
}

static void axpy_f16(int n, float a, const void * vx, float * y) {
    const uint16_t * x = vx;
    const __m512 va = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 w = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (x + i)));
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, w, _mm512_loadu_ps(y + i)));
    }
    if (i < n) {
        const __mmask16 k = tail_mask(n - i);
        const __m512 w = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, x + i));
        _mm512_mask_storeu_ps(y + i, k, _mm512_fmadd_ps(va, w, _mm512_maskz_loadu_ps(k, y + i)));
    }
}

static inline __m512 bf16x16(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static void axpy_bf16(int n, float a, const void * vx, float * y) {
    const uint16_t * x = vx;
    const __m512 va = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 w = bf16x16(_mm256_loadu_si256((const __m256i *) (x + i)));
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, w, _mm512_loadu_ps(y + i)));
    }
    if (i < n) {
        const __mmask16 k = tail_mask(n - i);
        const __m512 w = bf16x16(_mm256_maskz_loadu_epi16(k, x + i));
        _mm512_mask_storeu_ps(y + i, k, _mm512_fmadd_ps(va, w, _mm512_maskz_loadu_ps(k, y + i)));
    }
}

/* y[0..32) = s * q + y with q the block's 32 integer weights (two halves) */
static inline void fma_block(float * y, __m512 s, __m512i q_lo, __m512i q_hi) {
    _mm512_storeu_ps(y, _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(q_lo), _mm512_loadu_ps(y)));
    _mm512_storeu_ps(y + 16, _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(q_hi), _mm512_loadu_ps(y + 16)));
}

/* y[0..32) += m (the Q4_1/Q5_1 offset times a) */
static inline void add_offset(float * y, __m512 m) {
    _mm512_storeu_ps(y, _mm512_add_ps(_mm512_loadu_ps(y), m));
    _mm512_storeu_ps(y + 16, _mm512_add_ps(_mm512_loadu_ps(y + 16), m));
}

/* the 32 nibbles of qs: low nibbles are weights 0..15, high ones 16..31 */
static inline void nibbles(const uint8_t * qs, __m512i * lo, __m512i * hi) {
    const __m128i v = _mm_loadu_si128((const __m128i *) qs);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    *lo = _mm512_cvtepu8_epi32(_mm_and_si128(v, m4));
    *hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(v, 4), m4));
}

/* fifth bits: weight j gets +16 when bit j of qh is set */
static inline void high_bits(const uint8_t * qh, __m512i * lo, __m512i * hi) {
    uint32_t h;
    memcpy(&h, qh, sizeof(h));
    const __m512i sixteen = _mm512_set1_epi32(16);
    *lo = _mm512_mask_add_epi32(*lo, (__mmask16) (h & 0xFFFF), *lo, sixteen);
    *hi = _mm512_mask_add_epi32(*hi, (__mmask16) (h >> 16), *hi, sixteen);
}

static void axpy_q4_0(int n, float a, const void * vx, float * y) {
    const block_q4_0 * x = vx;
    const __m512i eight = _mm512_set1_epi32(8);
    for (int b = 0; b < n / QK4_0; b++, y += QK4_0) {
        __m512i lo, hi;
        nibbles(x[b].qs, &lo, &hi);
        fma_block(y, _mm512_set1_ps(a * GS_H2F(x[b].d)), _mm512_sub_epi32(lo, eight), _mm512_sub_epi32(hi, eight));
    }
}

static void axpy_q4_1(int n, float a, const void * vx, float * y) {
    const block_q4_1 * x = vx;
    for (int b = 0; b < n / QK4_1; b++, y += QK4_1) {
        __m512i lo, hi;
        nibbles(x[b].qs, &lo, &hi);
        add_offset(y, _mm512_set1_ps(a * GS_H2F(x[b].m)));
        fma_block(y, _mm512_set1_ps(a * GS_H2F(x[b].d)), lo, hi);
    }
}

static void axpy_q5_0(int n, float a, const void * vx, float * y) {
    const block_q5_0 * x = vx;
    const __m512i sixteen = _mm512_set1_epi32(16);
    for (int b = 0; b < n / QK5_0; b++, y += QK5_0) {
        __m512i lo, hi;
        nibbles(x[b].qs, &lo, &hi);
        high_bits(x[b].qh, &lo, &hi);
        fma_block(y, _mm512_set1_ps(a * GS_H2F(x[b].d)), _mm512_sub_epi32(lo, sixteen), _mm512_sub_epi32(hi, sixteen));
    }
}

static void axpy_q5_1(int n, float a, const void * vx, float * y) {
    const block_q5_1 * x = vx;
    for (int b = 0; b < n / QK5_1; b++, y += QK5_1) {
        __m512i lo, hi;
        nibbles(x[b].qs, &lo, &hi);
        high_bits(x[b].qh, &lo, &hi);
        add_offset(y, _mm512_set1_ps(a * GS_H2F(x[b].m)));
        fma_block(y, _mm512_set1_ps(a * GS_H2F(x[b].d)), lo, hi);
    }
}

static void axpy_q8_0(int n, float a, const void * vx, float * y) {
    const block_q8_0 * x = vx;
    for (int b = 0; b < n / QK8_0; b++, y += QK8_0) {
        const __m512i lo = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) x[b].qs));
        const __m512i hi = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) (x[b].qs + 16)));
        fma_block(y, _mm512_set1_ps(a * GS_H2F(x[b].d)), lo, hi);
    }
}

const gs_axpy_row_fn gs_axpy_rows_avx512[GS_TYPE_COUNT] = {
    [GS_TYPE_F32]  = axpy_f32,
    [GS_TYPE_F16]  = axpy_f16,
    [GS_TYPE_BF16] = axpy_bf16,
    [GS_TYPE_Q4_0] = axpy_q4_0,
    [GS_TYPE_Q4_1] = axpy_q4_1,
    [GS_TYPE_Q5_0] = axpy_q5_0,
    [GS_TYPE_Q5_1] = axpy_q5_1,
    [GS_TYPE_Q8_0] = axpy_q8_0,
};
