/*
 * vec_avx2_q.c - AVX2 dot products of the 32-weight block types (Q4_0,
 * Q5_0, Q8_0 with Q8_0 activations; Q4_1, Q5_1 with Q8_1), bit-identical
 * to the scalar kernels of vec_generic.c (llama.cpp's x86 order): per block
 * one 256-bit register of weights in order (low nibbles, then high), its 8
 * int32 lanes (sums of 4 adjacent products) converted to float and added
 * with one fused multiply-add by d_x * d_y into a single accumulator, block
 * after block; the lanes are summed by gs_avx2_hsum_ps. Q4_1/Q5_1 add the
 * sum of m_x * s_y over blocks, accumulated in block order (multiply, then
 * add: these sources are compiled with -ffp-contract=off).
 *
 * Signed weights (Q4_0, Q5_0 after removing the offset, Q8_0) use the sign
 * trick; unsigned ones (Q4_1, Q5_1) go straight into vpmaddubsw.
 */
#include "vec_avx2.h"

static inline __m256 fma_block(float d, __m256i dot, __m256 acc) {
    return _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(dot), acc);
}

void gs_avx2_dot_q4_0(int n, float * s, const void * vx, const void * vy) {
    const block_q4_0 * x = vx;
    const block_q8_0 * y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / QK4_0; b++) {
        const __m256i q = _mm256_sub_epi8(gs_avx2_nibbles(x[b].qs), _mm256_set1_epi8(8));
        const __m256i v = _mm256_loadu_si256((const __m256i *) y[b].qs);
        acc = fma_block(_cvtsh_ss(x[b].d) * _cvtsh_ss(y[b].d), gs_avx2_dot_s8s8(q, v), acc);
    }
    *s = gs_avx2_hsum_ps(acc);
}

/* Q5_0: (nibble | bit << 4) - 16 = nibble - 16 where the bit is clear
 * (nibble | 0xF0 as int8), the nibble itself where it is set */
void gs_avx2_dot_q5_0(int n, float * s, const void * vx, const void * vy) {
    const block_q5_0 * x = vx;
    const block_q8_0 * y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / QK5_0; b++) {
        const __m256i off = _mm256_andnot_si256(gs_avx2_bits_to_bytes(x[b].qh), _mm256_set1_epi8((char) 0xF0));
        const __m256i q = _mm256_or_si256(gs_avx2_nibbles(x[b].qs), off);
        const __m256i v = _mm256_loadu_si256((const __m256i *) y[b].qs);
        acc = fma_block(_cvtsh_ss(x[b].d) * _cvtsh_ss(y[b].d), gs_avx2_dot_s8s8(q, v), acc);
    }
    *s = gs_avx2_hsum_ps(acc);
}

void gs_avx2_dot_q8_0(int n, float * s, const void * vx, const void * vy) {
    const block_q8_0 * x = vx;
    const block_q8_0 * y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / QK8_0; b++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *) x[b].qs);
        const __m256i v = _mm256_loadu_si256((const __m256i *) y[b].qs);
        acc = fma_block(_cvtsh_ss(x[b].d) * _cvtsh_ss(y[b].d), gs_avx2_dot_s8s8(q, v), acc);
    }
    *s = gs_avx2_hsum_ps(acc);
}

/* Q4_1 / Q5_1: (d q + m) . y = d d_y (q . yq) + m s_y; q unsigned (0..31),
 * so q * yq pairs fit int16. */
void gs_avx2_dot_q4_1(int n, float * s, const void * vx, const void * vy) {
    const block_q4_1 * x = vx;
    const block_q8_1 * y = vy;
    __m256 acc = _mm256_setzero_ps();
    float ms = 0.0f;
    for (int b = 0; b < n / QK4_1; b++) {
        ms += _cvtsh_ss(x[b].m) * _cvtsh_ss(y[b].s);
        const __m256i v = _mm256_loadu_si256((const __m256i *) y[b].qs);
        acc = fma_block(_cvtsh_ss(x[b].d) * _cvtsh_ss(y[b].d), gs_avx2_dot_u8s8(gs_avx2_nibbles(x[b].qs), v), acc);
    }
    *s = gs_avx2_hsum_ps(acc) + ms;
}

void gs_avx2_dot_q5_1(int n, float * s, const void * vx, const void * vy) {
    const block_q5_1 * x = vx;
    const block_q8_1 * y = vy;
    __m256 acc = _mm256_setzero_ps();
    float ms = 0.0f;
    for (int b = 0; b < n / QK5_1; b++) {
        ms += _cvtsh_ss(x[b].m) * _cvtsh_ss(y[b].s);
        const __m256i hi = _mm256_and_si256(gs_avx2_bits_to_bytes(x[b].qh), _mm256_set1_epi8(0x10));
        const __m256i q = _mm256_or_si256(gs_avx2_nibbles(x[b].qs), hi);
        const __m256i v = _mm256_loadu_si256((const __m256i *) y[b].qs);
        acc = fma_block(_cvtsh_ss(x[b].d) * _cvtsh_ss(y[b].d), gs_avx2_dot_u8s8(q, v), acc);
    }
    *s = gs_avx2_hsum_ps(acc) + ms;
}
