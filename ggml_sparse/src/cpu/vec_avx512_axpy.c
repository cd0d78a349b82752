/*
 * vec_avx512_axpy.c - AVX-512 row axpy kernels of the sparse down
 * projection (gs_axpy_rows_fn): y[0..n) += a[r] * x[r][0..n) for nr rows x[r]
 * of one weight type, dequantized in registers. A block of y stays in
 * registers while the rows are added to it one after the other. For a block
 * with scale d a row adds (a * d) * q with one fused multiply-add per 16
 * weights (Q4_1/Q5_1: the a * m term first), so results differ from the
 * reference path (dequantize, multiply, add) by rounding only (K types: per
 * sub-block of 16/32 weights, y - a * dmin * m then + (a * d * sc) * q).
 * Integer weights become floats through a table (vpermps) where they take at
 * most 32 values.
 */
#include "sparse.h"
#include "../quants_ref.h"

#include <immintrin.h>

static inline __mmask16 tail_mask(int r) {
    return (__mmask16) ((1u << r) - 1u);
}

/* ---- float rows -------------------------------------------------------------- */
static inline __m512 ld_f32(const uint8_t * x, int i, __mmask16 k) {
    return _mm512_maskz_loadu_ps(k, (const float *) x + i);
}

static inline __m512 ld_f16(const uint8_t * x, int i, __mmask16 k) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, (const uint16_t *) x + i));
}

static inline __m512 ld_bf16(const uint8_t * x, int i, __mmask16 k) {
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, (const uint16_t *) x + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}

#define FLOAT_AXPY(name, LOAD)                                                                 \
static void axpy_##name(int n, int nr, const float * a, const uint8_t * const * x, float * y) { \
    for (int i = 0; i < n; i += 16) {                                                          \
        const __mmask16 k = n - i >= 16 ? (__mmask16) 0xFFFF : tail_mask(n - i);               \
        __m512 acc = _mm512_maskz_loadu_ps(k, y + i);                                          \
        for (int r = 0; r < nr; r++) acc = _mm512_fmadd_ps(_mm512_set1_ps(a[r]), LOAD(x[r], i, k), acc); \
        _mm512_mask_storeu_ps(y + i, k, acc);                                                  \
    }                                                                                          \
}

FLOAT_AXPY(f32, ld_f32)
FLOAT_AXPY(f16, ld_f16)
FLOAT_AXPY(bf16, ld_bf16)

/* ---- 32-weight blocks ------------------------------------------------------ */
/* the 32 nibbles of qs as int32 lanes: low nibbles are weights 0..15, high
 * ones 16..31 */
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

/* float value of each integer weight, q - offset, for q < 16 / q < 32 */
static inline __m512 lut16(int offset) {
    return _mm512_sub_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_ps((float) offset));
}

#define BLOCK_LOOP(...)                                                                       \
    for (int b = 0; b < n / 32; b++, y += 32) {                                                \
        __m512 y0 = _mm512_loadu_ps(y), y1 = _mm512_loadu_ps(y + 16);                          \
        for (int r = 0; r < nr; r++) { __VA_ARGS__ }                                                  \
        _mm512_storeu_ps(y, y0);                                                               \
        _mm512_storeu_ps(y + 16, y1);                                                          \
    }

static void axpy_q4_0(int n, int nr, const float * a, const uint8_t * const * x, float * y) {
    const __m512 lut = lut16(8);
    BLOCK_LOOP(
        const block_q4_0 * xb = (const block_q4_0 *) x[r] + b;
        __m512i lo, hi;
        nibbles(xb->qs, &lo, &hi);
        const __m512 s = _mm512_set1_ps(a[r] * GS_H2F(xb->d));
        y0 = _mm512_fmadd_ps(s, _mm512_permutexvar_ps(lo, lut), y0);
        y1 = _mm512_fmadd_ps(s, _mm512_permutexvar_ps(hi, lut), y1);
    )
}

static void axpy_q4_1(int n, int nr, const float * a, const uint8_t * const * x, float * y) {
    const __m512 lut = lut16(0);
    BLOCK_LOOP(
        const block_q4_1 * xb = (const block_q4_1 *) x[r] + b;
        __m512i lo, hi;
        nibbles(xb->qs, &lo, &hi);
        const __m512 s = _mm512_set1_ps(a[r] * GS_H2F(xb->d)), m = _mm512_set1_ps(a[r] * GS_H2F(xb->m));
        y0 = _mm512_fmadd_ps(s, _mm512_permutexvar_ps(lo, lut), _mm512_add_ps(y0, m));
        y1 = _mm512_fmadd_ps(s, _mm512_permutexvar_ps(hi, lut), _mm512_add_ps(y1, m));
    )
}

static void axpy_q5_0(int n, int nr, const float * a, const uint8_t * const * x, float * y) {
    const __m512 lut_lo = lut16(16), lut_hi = lut16(0);   /* q - 16 for q in 0..31 */
    BLOCK_LOOP(
        const block_q5_0 * xb = (const block_q5_0 *) x[r] + b;
        __m512i lo, hi;
        nibbles(xb->qs, &lo, &hi);
        high_bits(xb->qh, &lo, &hi);
        const __m512 s = _mm512_set1_ps(a[r] * GS_H2F(xb->d));
        y0 = _mm512_fmadd_ps(s, _mm512_permutex2var_ps(lut_lo, lo, lut_hi), y0);
        y1 = _mm512_fmadd_ps(s, _mm512_permutex2var_ps(lut_lo, hi, lut_hi), y1);
    )
}

static void axpy_q5_1(int n, int nr, const float * a, const uint8_t * const * x, float * y) {
    const __m512 lut_lo = lut16(0), lut_hi = lut16(-16);   /* q for q in 0..31 */
    BLOCK_LOOP(
        const block_q5_1 * xb = (const block_q5_1 *) x[r] + b;
        __m512i lo, hi;
        nibbles(xb->qs, &lo, &hi);
        high_bits(xb->qh, &lo, &hi);
        const __m512 s = _mm512_set1_ps(a[r] * GS_H2F(xb->d)), m = _mm512_set1_ps(a[r] * GS_H2F(xb->m));
        y0 = _mm512_fmadd_ps(s, _mm512_permutex2var_ps(lut_lo, lo, lut_hi), _mm512_add_ps(y0, m));
        y1 = _mm512_fmadd_ps(s, _mm512_permutex2var_ps(lut_lo, hi, lut_hi), _mm512_add_ps(y1, m));
    )
}

static void axpy_q8_0(int n, int nr, const float * a, const uint8_t * const * x, float * y) {
    BLOCK_LOOP(
        const block_q8_0 * xb = (const block_q8_0 *) x[r] + b;
        const __m512i lo = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) xb->qs));
        const __m512i hi = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) (xb->qs + 16)));
        const __m512 s = _mm512_set1_ps(a[r] * GS_H2F(xb->d));
        y0 = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(lo), y0);
        y1 = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(hi), y1);
    )
}

/* ---- 256-weight super-blocks ---------------------------------------------------- */
/* y[0..64) = acc[0..4) around a body that adds each row's part */
#define LOAD4(acc, y) for (int i = 0; i < 4; i++) acc[i] = _mm512_loadu_ps((y) + 16 * i)
#define STORE4(acc, y) for (int i = 0; i < 4; i++) _mm512_storeu_ps((y) + 16 * i, acc[i])

/* 32 weight bytes in 0..15 / 0..31 as two int32 registers (weights 0..15, 16..31) */
static inline void widen32(__m256i v, __m512i * lo, __m512i * hi) {
    *lo = _mm512_cvtepu8_epi32(_mm256_castsi256_si128(v));
    *hi = _mm512_cvtepu8_epi32(_mm256_extracti128_si256(v, 1));
}

/* Q4_K / Q5_K: sub-block j of 32 weights: w = d * sc_j * q - dmin * m_j. The
 * pair of sub-blocks k (weights 64k..64k+63) are the low and high nibbles of
 * qs[32k..32k+31] (Q5_K: plus 16 where bit 2k / 2k+1 of qh[l] is set). */
static inline void add_k_pair(__m512 acc[4], float a, const uint8_t * scales, float d, float dmin, int k,
                              __m256i lo_q, __m256i hi_q, __m512 lut_lo, __m512 lut_hi) {
    uint8_t sc0, m0, sc1, m1;
    gs_get_scale_min_k4(2 * k, scales, &sc0, &m0);
    gs_get_scale_min_k4(2 * k + 1, scales, &sc1, &m1);
    const float ad = a * d, am = a * dmin;
    const __m512 s0 = _mm512_set1_ps(ad * sc0), s1 = _mm512_set1_ps(ad * sc1);
    const __m512 o0 = _mm512_set1_ps(am * m0), o1 = _mm512_set1_ps(am * m1);
    __m512i q[4];
    widen32(lo_q, &q[0], &q[1]);
    widen32(hi_q, &q[2], &q[3]);
    for (int i = 0; i < 4; i++) {
        const __m512 w = _mm512_permutex2var_ps(lut_lo, q[i], lut_hi);
        acc[i] = _mm512_fmadd_ps(i < 2 ? s0 : s1, w, _mm512_sub_ps(acc[i], i < 2 ? o0 : o1));
    }
}

static void axpy_q4_K(int n, int nr, const float * a, const uint8_t * const * x, float * y) {
    const __m512 lut_lo = lut16(0), lut_hi = lut16(-16);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int b = 0; b < n / QK_K; b++) {
        for (int k = 0; k < 4; k++, y += 64) {
            __m512 acc[4];
            LOAD4(acc, y);
            for (int r = 0; r < nr; r++) {
                const block_q4_K * xb = (const block_q4_K *) x[r] + b;
                const __m256i v = _mm256_loadu_si256((const __m256i *) (xb->qs + 32 * k));
                add_k_pair(acc, a[r], xb->scales, GS_H2F(xb->d), GS_H2F(xb->dmin), k, _mm256_and_si256(v, m4),
                           _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), lut_lo, lut_hi);
            }
            STORE4(acc, y);
        }
    }
}

static void axpy_q5_K(int n, int nr, const float * a, const uint8_t * const * x, float * y) {
    const __m512 lut_lo = lut16(0), lut_hi = lut16(-16);
    const __m256i m4 = _mm256_set1_epi8(0x0F), sixteen = _mm256_set1_epi8(16);
    for (int b = 0; b < n / QK_K; b++) {
        for (int k = 0; k < 4; k++, y += 64) {
            __m512 acc[4];
            LOAD4(acc, y);
            for (int r = 0; r < nr; r++) {
                const block_q5_K * xb = (const block_q5_K *) x[r] + b;
                const __m256i v = _mm256_loadu_si256((const __m256i *) (xb->qs + 32 * k));
                const __m256i h = _mm256_loadu_si256((const __m256i *) xb->qh);
                const __mmask32 h0 = _mm256_test_epi8_mask(h, _mm256_set1_epi8((char) (1 << (2 * k))));
                const __mmask32 h1 = _mm256_test_epi8_mask(h, _mm256_set1_epi8((char) (2 << (2 * k))));
                const __m256i lo = _mm256_mask_add_epi8(_mm256_and_si256(v, m4), h0, _mm256_and_si256(v, m4), sixteen);
                const __m256i hq = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                add_k_pair(acc, a[r], xb->scales, GS_H2F(xb->d), GS_H2F(xb->dmin), k, lo,
                           _mm256_mask_add_epi8(hq, h1, hq, sixteen), lut_lo, lut_hi);
            }
            STORE4(acc, y);
        }
    }
}

/* Q6_K: per half of 128 weights, q = low 4 bits from ql, high 2 from qh
 * (quants.h), w = d * scales[j] * (q - 32) for chunk j of 16 weights. */
static void axpy_q6_K(int n, int nr, const float * a, const uint8_t * const * x, float * y) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    const __m512i off = _mm512_set1_epi32(32);
    for (int b = 0; b < n / QK_K; b++) {
        for (int half = 0; half < 2; half++, y += 128) {
            __m512 acc[8];
            for (int i = 0; i < 8; i++) acc[i] = _mm512_loadu_ps(y + 16 * i);
            for (int r = 0; r < nr; r++) {
                const block_q6_K * xb = (const block_q6_K *) x[r] + b;
                const uint8_t * ql = xb->ql + 64 * half;
                const __m256i l0 = _mm256_loadu_si256((const __m256i *) ql);
                const __m256i l1 = _mm256_loadu_si256((const __m256i *) (ql + 32));
                const __m256i h = _mm256_loadu_si256((const __m256i *) (xb->qh + 32 * half));
                __m256i q[4];
                q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m2), 4));
                q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4));
                q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4));
                q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4));
                const float ad = a[r] * GS_H2F(xb->d);
                const int8_t * sc = xb->scales + 8 * half;
                for (int j = 0; j < 4; j++) {
                    __m512i lo, hi;
                    widen32(q[j], &lo, &hi);
                    acc[2 * j] = _mm512_fmadd_ps(_mm512_set1_ps(ad * sc[2 * j]),
                                                 _mm512_cvtepi32_ps(_mm512_sub_epi32(lo, off)), acc[2 * j]);
                    acc[2 * j + 1] = _mm512_fmadd_ps(_mm512_set1_ps(ad * sc[2 * j + 1]),
                                                     _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, off)), acc[2 * j + 1]);
                }
            }
            for (int i = 0; i < 8; i++) _mm512_storeu_ps(y + 16 * i, acc[i]);
        }
    }
}

const gs_axpy_rows_fn gs_axpy_rows_avx512[GS_TYPE_COUNT] = {
    [GS_TYPE_F32]  = axpy_f32,
    [GS_TYPE_F16]  = axpy_f16,
    [GS_TYPE_BF16] = axpy_bf16,
    [GS_TYPE_Q4_0] = axpy_q4_0,
    [GS_TYPE_Q4_1] = axpy_q4_1,
    [GS_TYPE_Q5_0] = axpy_q5_0,
    [GS_TYPE_Q5_1] = axpy_q5_1,
    [GS_TYPE_Q8_0] = axpy_q8_0,
    [GS_TYPE_Q4_K] = axpy_q4_K,
    [GS_TYPE_Q5_K] = axpy_q5_K,
    [GS_TYPE_Q6_K] = axpy_q6_K,
};
