/*
 * vec_avx512_q.c - AVX-512 VNNI single-row dot products of the 32-weight
 * block types (Q4_0, Q5_0, Q8_0 with Q8_0 activations; Q4_1, Q5_1 with
 * Q8_1), bit-identical to the scalar kernels of vec_generic.c (llama.cpp's
 * x86 order): per block, the weights in order in a 256-bit register, 8
 * int32 lanes of 4-product sums (vpdpbusd), converted to float and added
 * with one fused multiply-add by d_x * d_y into one accumulator, block
 * after block; the lanes summed by gs256_hsum; Q4_1/Q5_1 add the m_x * s_y
 * terms accumulated in block order (multiply, then add).
 *
 * vpdpbusd multiplies unsigned by signed bytes: weights are made unsigned
 * (q in 0..15 / 0..31, int8 + 128 for Q8_0) and the offset o is removed per
 * lane with o * (sum of the lane's 4 activations) = vpdpbusd(o, y).
 * Matrix products use the tile kernels (vec_avx512_tile.c) instead.
 */
#include "vec_avx512_blocks.h"

static inline __m256 fma_block(float d, __m256i dot, __m256 acc) {
    return _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(dot), acc);
}

/* per lane: q . y - off * sum(y) */
static inline __m256i dot_offset(__m256i q, __m256i y, __m256i off) {
    const __m256i z = _mm256_setzero_si256();
    return _mm256_sub_epi32(_mm256_dpbusd_epi32(z, q, y), _mm256_dpbusd_epi32(z, off, y));
}

static inline __m256i load32(const int8_t * p) {
    return _mm256_loadu_si256((const __m256i *) p);
}

void gs_avx512_dot_q4_0(int n, float * s, const void * vx, const void * vy) {
    const block_q4_0 * x = vx;
    const block_q8_0 * y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / QK4_0; b++) {
        const __m256i dot = dot_offset(gs256_nibbles(x[b].qs), load32(y[b].qs), _mm256_set1_epi8(8));
        acc = fma_block(_cvtsh_ss(x[b].d) * _cvtsh_ss(y[b].d), dot, acc);
    }
    *s = gs256_hsum(acc);
}

void gs_avx512_dot_q5_0(int n, float * s, const void * vx, const void * vy) {
    const block_q5_0 * x = vx;
    const block_q8_0 * y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / QK5_0; b++) {
        const __m256i q = gs256_add_high(gs256_nibbles(x[b].qs), x[b].qh);
        const __m256i dot = dot_offset(q, load32(y[b].qs), _mm256_set1_epi8(16));
        acc = fma_block(_cvtsh_ss(x[b].d) * _cvtsh_ss(y[b].d), dot, acc);
    }
    *s = gs256_hsum(acc);
}

void gs_avx512_dot_q8_0(int n, float * s, const void * vx, const void * vy) {
    const block_q8_0 * x = vx;
    const block_q8_0 * y = vy;
    const __m256i c80 = _mm256_set1_epi8((char) 0x80);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / QK8_0; b++) {
        const __m256i dot = dot_offset(_mm256_xor_si256(load32(x[b].qs), c80), load32(y[b].qs), c80);
        acc = fma_block(_cvtsh_ss(x[b].d) * _cvtsh_ss(y[b].d), dot, acc);
    }
    *s = gs256_hsum(acc);
}

/* Q4_1 / Q5_1: (d q + m) . y = d d_y (q . yq) + m s_y */
void gs_avx512_dot_q4_1(int n, float * s, const void * vx, const void * vy) {
    const block_q4_1 * x = vx;
    const block_q8_1 * y = vy;
    __m256 acc = _mm256_setzero_ps();
    float ms = 0.0f;
    for (int b = 0; b < n / QK4_1; b++) {
        ms += _cvtsh_ss(x[b].m) * _cvtsh_ss(y[b].s);
        const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), gs256_nibbles(x[b].qs), load32(y[b].qs));
        acc = fma_block(_cvtsh_ss(x[b].d) * _cvtsh_ss(y[b].d), dot, acc);
    }
    *s = gs256_hsum(acc) + ms;
}

void gs_avx512_dot_q5_1(int n, float * s, const void * vx, const void * vy) {
    const block_q5_1 * x = vx;
    const block_q8_1 * y = vy;
    __m256 acc = _mm256_setzero_ps();
    float ms = 0.0f;
    for (int b = 0; b < n / QK5_1; b++) {
        ms += _cvtsh_ss(x[b].m) * _cvtsh_ss(y[b].s);
        const __m256i q = gs256_add_high(gs256_nibbles(x[b].qs), x[b].qh);
        const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, load32(y[b].qs));
        acc = fma_block(_cvtsh_ss(x[b].d) * _cvtsh_ss(y[b].d), dot, acc);
    }
    *s = gs256_hsum(acc) + ms;
}
