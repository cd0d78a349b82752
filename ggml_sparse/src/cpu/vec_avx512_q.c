/*
 * vec_avx512_q.c - AVX-512 VNNI dot products of the 32-weight block types
 * (Q4_0, Q5_0, Q8_0 with Q8_0 activations; Q4_1, Q5_1 with Q8_1).
 *
 * Each step handles two blocks in one 512-bit register (64 weights) and
 * uses vpdpbusd (unsigned bytes x signed bytes, summed in fours into int32):
 * the weights are brought into unsigned form (q in 0..15 / 0..31, or int8
 * + 128 for Q8_0) and the offset is removed with the activations' sum,
 * o * sum(y) = vpdpbusd(o, y). The int32 lanes of each block are scaled by
 * that block's d_x * d_y in float. An odd last block is paired with an
 * all-zero block.
 */
#include "vec_avx512.h"

static const block_q4_0 zero_q4_0;
static const block_q4_1 zero_q4_1;
static const block_q5_0 zero_q5_0;
static const block_q5_1 zero_q5_1;
static const block_q8_0 zero_q8_0;
static const block_q8_1 zero_q8_1;

/* q (unsigned, 64 weights of two blocks) . y minus off * sum(y), per 4 lanes */
static inline __m512i dot_offset(__m512i q, __m512i y, __m512i off) {
    const __m512i z = _mm512_setzero_si512();
    return _mm512_sub_epi32(_mm512_dpbusd_epi32(z, q, y), _mm512_dpbusd_epi32(z, off, y));
}

/* Bit 4 of every weight byte of two Q5 blocks from their qh words. */
static inline __m512i add_high_bits(__m512i q, const uint8_t * qh0, const uint8_t * qh1) {
    uint32_t h0, h1;
    memcpy(&h0, qh0, 4);
    memcpy(&h1, qh1, 4);
    const __mmask64 k = _cvtu64_mask64((uint64_t) h0 | (uint64_t) h1 << 32);
    return _mm512_mask_add_epi8(q, k, q, _mm512_set1_epi8(16));
}

#define SCALE2(x0, x1, y0, y1) \
    gs512_splat2(_cvtsh_ss((x0)->d) * _cvtsh_ss((y0)->d), _cvtsh_ss((x1)->d) * _cvtsh_ss((y1)->d))
#define SCALE2_Q8_1(x0, x1, y0, y1) \
    gs512_splat2(_cvtsh_ss((x0)->d) * (y0)->d, _cvtsh_ss((x1)->d) * (y1)->d)

static inline __m512 pair_q4_0(const block_q4_0 * x0, const block_q4_0 * x1,
                               const block_q8_0 * y0, const block_q8_0 * y1, __m512 acc, float * ms) {
    const __m512i q = gs512_nibbles_2x16(x0->qs, x1->qs);
    const __m512i v = gs512_load_2x32(y0->qs, y1->qs);
    const __m512i d = dot_offset(q, v, _mm512_set1_epi8(8));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), SCALE2(x0, x1, y0, y1), acc);
}

static inline __m512 pair_q5_0(const block_q5_0 * x0, const block_q5_0 * x1,
                               const block_q8_0 * y0, const block_q8_0 * y1, __m512 acc, float * ms) {
    const __m512i q = add_high_bits(gs512_nibbles_2x16(x0->qs, x1->qs), x0->qh, x1->qh);
    const __m512i v = gs512_load_2x32(y0->qs, y1->qs);
    const __m512i d = dot_offset(q, v, _mm512_set1_epi8(16));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), SCALE2(x0, x1, y0, y1), acc);
}

static inline __m512 pair_q8_0(const block_q8_0 * x0, const block_q8_0 * x1,
                               const block_q8_0 * y0, const block_q8_0 * y1, __m512 acc, float * ms) {
    const __m512i c80 = _mm512_set1_epi8((char) 0x80);
    const __m512i q = _mm512_xor_si512(gs512_load_2x32(x0->qs, x1->qs), c80);
    const __m512i v = gs512_load_2x32(y0->qs, y1->qs);
    const __m512i d = dot_offset(q, v, c80);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), SCALE2(x0, x1, y0, y1), acc);
}

/* Q4_1/Q5_1: sum_i (d q_i + m) y_i = d d_y sum(q yq) + m s_y; the m s_y part
 * goes to *ms. */
static inline __m512 pair_q4_1(const block_q4_1 * x0, const block_q4_1 * x1,
                               const block_q8_1 * y0, const block_q8_1 * y1, __m512 acc, float * ms) {
    const __m512i q = gs512_nibbles_2x16(x0->qs, x1->qs);
    const __m512i v = gs512_load_2x32(y0->qs, y1->qs);
    const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, v);
    *ms += _cvtsh_ss(x0->m) * y0->s + _cvtsh_ss(x1->m) * y1->s;
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), SCALE2_Q8_1(x0, x1, y0, y1), acc);
}

static inline __m512 pair_q5_1(const block_q5_1 * x0, const block_q5_1 * x1,
                               const block_q8_1 * y0, const block_q8_1 * y1, __m512 acc, float * ms) {
    const __m512i q = add_high_bits(gs512_nibbles_2x16(x0->qs, x1->qs), x0->qh, x1->qh);
    const __m512i v = gs512_load_2x32(y0->qs, y1->qs);
    const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, v);
    *ms += _cvtsh_ss(x0->m) * y0->s + _cvtsh_ss(x1->m) * y1->s;
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), SCALE2_Q8_1(x0, x1, y0, y1), acc);
}

/* Loops over block pairs with two accumulators; an odd last block is
 * paired with the type's zero block. MS: where the Q4_1/Q5_1 pairs add
 * their m s_y terms (unused, NULL, for the other types). */
#define DOT_PAIRS(PAIR, ZX, ZY, MS)                                                   \
    const int nb = n / QK8_0;                                                           \
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();                      \
    int b = 0;                                                                          \
    for (; b + 4 <= nb; b += 4) {                                                       \
        acc0 = PAIR(&x[b], &x[b + 1], &y[b], &y[b + 1], acc0, MS);              \
        acc1 = PAIR(&x[b + 2], &x[b + 3], &y[b + 2], &y[b + 3], acc1, MS);      \
    }                                                                                   \
    if (b + 2 <= nb) {                                                                  \
        acc0 = PAIR(&x[b], &x[b + 1], &y[b], &y[b + 1], acc0, MS);              \
        b += 2;                                                                         \
    }                                                                                   \
    if (b < nb) acc1 = PAIR(&x[b], &(ZX), &y[b], &(ZY), acc1, MS);              \
    const float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))

void gs_avx512_dot_q4_0(int n, float * s, const void * vx, const void * vy) {
    const block_q4_0 * x = vx;
    const block_q8_0 * y = vy;
    DOT_PAIRS(pair_q4_0, zero_q4_0, zero_q8_0, NULL);
    *s = sum;
}

void gs_avx512_dot_q5_0(int n, float * s, const void * vx, const void * vy) {
    const block_q5_0 * x = vx;
    const block_q8_0 * y = vy;
    DOT_PAIRS(pair_q5_0, zero_q5_0, zero_q8_0, NULL);
    *s = sum;
}

void gs_avx512_dot_q8_0(int n, float * s, const void * vx, const void * vy) {
    const block_q8_0 * x = vx;
    const block_q8_0 * y = vy;
    DOT_PAIRS(pair_q8_0, zero_q8_0, zero_q8_0, NULL);
    *s = sum;
}

void gs_avx512_dot_q4_1(int n, float * s, const void * vx, const void * vy) {
    const block_q4_1 * x = vx;
    const block_q8_1 * y = vy;
    float ms = 0.0f;
    DOT_PAIRS(pair_q4_1, zero_q4_1, zero_q8_1, &ms);
    *s = sum + ms;
}

void gs_avx512_dot_q5_1(int n, float * s, const void * vx, const void * vy) {
    const block_q5_1 * x = vx;
    const block_q8_1 * y = vy;
    float ms = 0.0f;
    DOT_PAIRS(pair_q5_1, zero_q5_1, zero_q8_1, &ms);
    *s = sum + ms;
}
