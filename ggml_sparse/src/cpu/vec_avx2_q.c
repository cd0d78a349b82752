/*
 * vec_avx2_q.c - AVX2 dot products of the 32-weight block types (Q4_0,
 * Q5_0, Q8_0 with Q8_0 activations; Q4_1, Q5_1 with Q8_1), one block per
 * 256-bit register (weights in order: low nibbles then high nibbles).
 *
 * Signed weights (Q4_0, Q5_0 after removing the offset, Q8_0) use the sign
 * trick; unsigned ones (Q4_1, Q5_1) go straight into vpmaddubsw. The 8 int32
 * lanes of a block are scaled by its d_x * d_y in float. Two accumulators
 * alternate between even and odd blocks.
 */
#include "vec_avx2.h"

static inline __m256 scale(float d, __m256i dot, __m256 acc) {
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d), acc);
}

/* Q4_0: q - 8 as signed bytes */
static inline __m256 one_q4_0(const block_q4_0 * x, const block_q8_0 * y, __m256 acc, float * ms) {
    const __m256i q = _mm256_sub_epi8(gs_avx2_nibbles(x->qs), _mm256_set1_epi8(8));
    const __m256i v = _mm256_loadu_si256((const __m256i *) y->qs);
    return scale(_cvtsh_ss(x->d) * _cvtsh_ss(y->d), gs_avx2_dot_s8s8(q, v), acc);
}

/* Q5_0: (nibble | bit << 4) - 16 = nibble - 16 where the bit is clear
 * (nibble | 0xF0 as int8), the nibble itself where it is set */
static inline __m256 one_q5_0(const block_q5_0 * x, const block_q8_0 * y, __m256 acc, float * ms) {
    const __m256i off = _mm256_andnot_si256(gs_avx2_bits_to_bytes(x->qh), _mm256_set1_epi8((char) 0xF0));
    const __m256i q = _mm256_or_si256(gs_avx2_nibbles(x->qs), off);
    const __m256i v = _mm256_loadu_si256((const __m256i *) y->qs);
    return scale(_cvtsh_ss(x->d) * _cvtsh_ss(y->d), gs_avx2_dot_s8s8(q, v), acc);
}

static inline __m256 one_q8_0(const block_q8_0 * x, const block_q8_0 * y, __m256 acc, float * ms) {
    const __m256i q = _mm256_loadu_si256((const __m256i *) x->qs);
    const __m256i v = _mm256_loadu_si256((const __m256i *) y->qs);
    return scale(_cvtsh_ss(x->d) * _cvtsh_ss(y->d), gs_avx2_dot_s8s8(q, v), acc);
}

/* Q4_1 / Q5_1: (d q + m) . y = d d_y (q . yq) + m s_y; the m s_y terms go
 * to *ms (unused, NULL, for the other types). q is unsigned (0..31): q * yq
 * pairs fit int16. */
static inline __m256 one_q4_1(const block_q4_1 * x, const block_q8_1 * y, __m256 acc, float * ms) {
    const __m256i v = _mm256_loadu_si256((const __m256i *) y->qs);
    *ms += _cvtsh_ss(x->m) * y->s;
    return scale(_cvtsh_ss(x->d) * y->d, gs_avx2_dot_u8s8(gs_avx2_nibbles(x->qs), v), acc);
}

static inline __m256 one_q5_1(const block_q5_1 * x, const block_q8_1 * y, __m256 acc, float * ms) {
    const __m256i hi = _mm256_and_si256(gs_avx2_bits_to_bytes(x->qh), _mm256_set1_epi8(0x10));
    const __m256i q = _mm256_or_si256(gs_avx2_nibbles(x->qs), hi);
    const __m256i v = _mm256_loadu_si256((const __m256i *) y->qs);
    *ms += _cvtsh_ss(x->m) * y->s;
    return scale(_cvtsh_ss(x->d) * y->d, gs_avx2_dot_u8s8(q, v), acc);
}

#define DOT_BLOCKS(BLOCK, MS)                                                     \
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                 \
    const int nb = n / 32;                                                         \
    int b = 0;                                                                     \
    for (; b + 2 <= nb; b += 2) {                                                  \
        acc0 = BLOCK(&x[b], &y[b], acc0, MS);                              \
        acc1 = BLOCK(&x[b + 1], &y[b + 1], acc1, MS);                      \
    }                                                                              \
    if (b < nb) acc0 = BLOCK(&x[b], &y[b], acc0, MS);                      \
    const float sum = gs_avx2_hsum_ps(_mm256_add_ps(acc0, acc1))

void gs_avx2_dot_q4_0(int n, float * s, const void * vx, const void * vy) {
    const block_q4_0 * x = vx;
    const block_q8_0 * y = vy;
    DOT_BLOCKS(one_q4_0, NULL);
    *s = sum;
}

void gs_avx2_dot_q5_0(int n, float * s, const void * vx, const void * vy) {
    const block_q5_0 * x = vx;
    const block_q8_0 * y = vy;
    DOT_BLOCKS(one_q5_0, NULL);
    *s = sum;
}

void gs_avx2_dot_q8_0(int n, float * s, const void * vx, const void * vy) {
    const block_q8_0 * x = vx;
    const block_q8_0 * y = vy;
    DOT_BLOCKS(one_q8_0, NULL);
    *s = sum;
}

void gs_avx2_dot_q4_1(int n, float * s, const void * vx, const void * vy) {
    const block_q4_1 * x = vx;
    const block_q8_1 * y = vy;
    float ms = 0.0f;
    DOT_BLOCKS(one_q4_1, &ms);
    *s = sum + ms;
}

void gs_avx2_dot_q5_1(int n, float * s, const void * vx, const void * vy) {
    const block_q5_1 * x = vx;
    const block_q8_1 * y = vy;
    float ms = 0.0f;
    DOT_BLOCKS(one_q5_1, &ms);
    *s = sum + ms;
}
