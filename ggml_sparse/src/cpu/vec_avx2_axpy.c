/*
 * vec_avx2_axpy.c - AVX2 row axpy kernels of the sparse down projection
 * (gs_axpy_rows_fn): y[0..n) += a[r] * x[r][0..n) for nr rows x[r] of one
 * weight type, dequantized in registers; a block of y stays in registers
 * while the rows are added one after the other, each with fused
 * multiply-adds of (a * d) * q over 8 weights (Q4_1/Q5_1: a * m first).
 */
#include "sparse.h"

#include <immintrin.h>
#include <math.h>

/* ---- float rows: 8 at a time, the tail one by one ---------------------------- */
static inline __m256 ld_f32(const uint8_t * x, int i) {
    return _mm256_loadu_ps((const float *) x + i);
}

static inline __m256 ld_f16(const uint8_t * x, int i) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) ((const uint16_t *) x + i)));
}

static inline __m256 ld_bf16(const uint8_t * x, int i) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *) ((const uint16_t *) x + i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}

static inline float one_f32(const uint8_t * x, int i) { return ((const float *) x)[i]; }
static inline float one_f16(const uint8_t * x, int i) { return GS_H2F(((const uint16_t *) x)[i]); }
static inline float one_bf16(const uint8_t * x, int i) { return gs_bf16_to_float(((const uint16_t *) x)[i]); }

#define FLOAT_AXPY(name)                                                                       \
static void axpy_##name(int n, int nr, const float * a, const uint8_t * const * x, float * y) { \
    int i = 0;                                                                                 \
    for (; i + 8 <= n; i += 8) {                                                               \
        __m256 acc = _mm256_loadu_ps(y + i);                                                   \
        for (int r = 0; r < nr; r++) acc = _mm256_fmadd_ps(_mm256_set1_ps(a[r]), ld_##name(x[r], i), acc); \
        _mm256_storeu_ps(y + i, acc);                                                          \
    }                                                                                          \
    for (; i < n; i++) {                                                                       \
        for (int r = 0; r < nr; r++) y[i] = fmaf(a[r], one_##name(x[r], i), y[i]);             \
    }                                                                                          \
}

FLOAT_AXPY(f32)
FLOAT_AXPY(f16)
FLOAT_AXPY(bf16)

/* ---- 32-weight blocks ------------------------------------------------------ */
/* q[k]: integer weights 8k..8k+7 of the block */
static inline void fma_block(__m256 acc[4], __m256 s, const __m256i q[4]) {
    for (int k = 0; k < 4; k++) acc[k] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(q[k]), acc[k]);
}

static inline void add_offset(__m256 acc[4], __m256 m) {
    for (int k = 0; k < 4; k++) acc[k] = _mm256_add_ps(acc[k], m);
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

#define BLOCK_LOOP(...)                                                                       \
    for (int b = 0; b < n / 32; b++, y += 32) {                                                \
        __m256 acc[4];                                                                         \
        for (int k = 0; k < 4; k++) acc[k] = _mm256_loadu_ps(y + 8 * k);                       \
        for (int r = 0; r < nr; r++) { __VA_ARGS__ }                                                  \
        for (int k = 0; k < 4; k++) _mm256_storeu_ps(y + 8 * k, acc[k]);                        \
    }

static void axpy_q4_0(int n, int nr, const float * a, const uint8_t * const * x, float * y) {
    BLOCK_LOOP(
        const block_q4_0 * xb = (const block_q4_0 *) x[r] + b;
        __m256i q[4];
        nibbles(xb->qs, q);
        offset_q(q, 8);
        fma_block(acc, _mm256_set1_ps(a[r] * GS_H2F(xb->d)), q);
    )
}

static void axpy_q4_1(int n, int nr, const float * a, const uint8_t * const * x, float * y) {
    BLOCK_LOOP(
        const block_q4_1 * xb = (const block_q4_1 *) x[r] + b;
        __m256i q[4];
        nibbles(xb->qs, q);
        add_offset(acc, _mm256_set1_ps(a[r] * GS_H2F(xb->m)));
        fma_block(acc, _mm256_set1_ps(a[r] * GS_H2F(xb->d)), q);
    )
}

static void axpy_q5_0(int n, int nr, const float * a, const uint8_t * const * x, float * y) {
    BLOCK_LOOP(
        const block_q5_0 * xb = (const block_q5_0 *) x[r] + b;
        __m256i q[4];
        nibbles(xb->qs, q);
        high_bits(xb->qh, q);
        offset_q(q, 16);
        fma_block(acc, _mm256_set1_ps(a[r] * GS_H2F(xb->d)), q);
    )
}

static void axpy_q5_1(int n, int nr, const float * a, const uint8_t * const * x, float * y) {
    BLOCK_LOOP(
        const block_q5_1 * xb = (const block_q5_1 *) x[r] + b;
        __m256i q[4];
        nibbles(xb->qs, q);
        high_bits(xb->qh, q);
        add_offset(acc, _mm256_set1_ps(a[r] * GS_H2F(xb->m)));
        fma_block(acc, _mm256_set1_ps(a[r] * GS_H2F(xb->d)), q);
    )
}

static void axpy_q8_0(int n, int nr, const float * a, const uint8_t * const * x, float * y) {
    BLOCK_LOOP(
        const block_q8_0 * xb = (const block_q8_0 *) x[r] + b;
        __m256i q[4];
        for (int k = 0; k < 4; k++) q[k] = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *) (xb->qs + 8 * k)));
        fma_block(acc, _mm256_set1_ps(a[r] * GS_H2F(xb->d)), q);
    )
}

const gs_axpy_rows_fn gs_axpy_rows_avx2[GS_TYPE_COUNT] = {
    [GS_TYPE_F32]  = axpy_f32,
    [GS_TYPE_F16]  = axpy_f16,
    [GS_TYPE_BF16] = axpy_bf16,
    [GS_TYPE_Q4_0] = axpy_q4_0,
    [GS_TYPE_Q4_1] = axpy_q4_1,
    [GS_TYPE_Q5_0] = axpy_q5_0,
    [GS_TYPE_Q5_1] = axpy_q5_1,
    [GS_TYPE_Q8_0] = axpy_q8_0,
};
