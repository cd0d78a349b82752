/*
 * vec_avx512_bundle.c - AVX-512 VNNI kernels of the fused sparse FFN over
 * Q4_0 neuron bundles (ops_sparse_bundle.c): the gate/up dots of up to 4
 * records with one token's Q8_0 activations, and the down rows' axpy.
 *
 * Results are bit-identical to the generic kernels the op otherwise uses
 * (vec_avx512_tile.c's scattered-row dots, vec_avx512_axpy.c's row axpy):
 * - dots: per block the same 8 int32 lanes q . y - 8 sum(y) (integers, so
 *   computed differently: the -8 sum(y) term of each activation block once
 *   per token, as the starting value of the VNNI accumulation), then the same
 *   fused multiply-add by d_x * d_y per block in block order and gs256_hsum;
 * - axpy: per block and row the same (a * d) * (q - 8) fused multiply-adds,
 *   rows one after the other, into a partial output kept in a permuted
 *   order (see the kernel) so that no shuffle per weight is needed.
 * Both take the block scales of 8 blocks at a time (one word permute, one
 * conversion, one multiply for 8 products a * d or d_x * d_y).
 */
#include "sparse.h"
#include "vec_avx512_blocks.h"

#define NR 4

static inline __attribute__((always_inline)) __m256i nibbles32(const uint8_t * qs) {
    /* [qs | qs] shifted by 0 / 4 bits per 128-bit half: weights 0..15 are
     * the low nibbles, 16..31 the high ones */
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) qs));
    return _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F));
}

/* sc[i] = mul[i] * d of block i of xb, for i < nb <= 8 (as float products,
 * the same as one at a time). Eight blocks (144 bytes) have their scales in
 * 16-bit words 0, 9, .., 63 of their first 128 bytes: one two-register
 * word permute picks them; fewer blocks are done one by one. */
static inline __attribute__((always_inline)) void scales8(const block_q4_0 * xb, int nb, __m256 mul, float * sc) {
    if (nb == 8) {
        const __m512i idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                             0, 0, 0, 0, 0, 0, 0, 0, 63, 54, 45, 36, 27, 18, 9, 0);
        const __m512i w = _mm512_permutex2var_epi16(_mm512_loadu_si512(xb), idx,
                                                    _mm512_loadu_si512((const uint8_t *) xb + 64));
        _mm256_storeu_ps(sc, _mm256_mul_ps(_mm256_cvtph_ps(_mm512_castsi512_si128(w)), mul));
        return;
    }
    float m[8];
    _mm256_storeu_ps(m, mul);
    for (int i = 0; i < nb; i++) sc[i] = m[i] * _cvtsh_ss(xb[i].d);
}

void gs_bundle_prep_q4_0_avx512(int n, const void * y, void * aux) {
    const block_q8_0 * yb = y;
    __m256i * neg = aux;
    float * yd = (float *) (neg + n / 32);
    const __m256i z = _mm256_setzero_si256(), eight = _mm256_set1_epi8(8);
    for (int b = 0; b < n / 32; b++) {
        const __m256i yq = _mm256_loadu_si256((const __m256i *) yb[b].qs);
        _mm256_storeu_si256(&neg[b], _mm256_sub_epi32(z, _mm256_dpbusd_epi32(z, eight, yq)));
        yd[b] = _cvtsh_ss(yb[b].d);
    }
}

/* R rows at once (R a constant after inlining) */
static inline __attribute__((always_inline)) void dots_rows(int R, int n, float * s, const uint8_t * const * x,
                                                          const void * y, const void * aux, gs_pf_cursor * pf) {
    const block_q8_0 * yb = y;
    const __m256i * neg = aux;
    const float * yd = (const float *) (neg + n / 32);
    const int nb = n / 32;
    __m256 acc[NR];
    float sc[NR][8];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (int b0 = 0; b0 < nb; b0 += 8) {
        const int m = nb - b0 < 8 ? nb - b0 : 8;
        const __m256 ydv = _mm256_maskz_loadu_ps((__mmask8) ((1u << m) - 1u), yd + b0);
        for (int r = 0; r < R; r++) scales8((const block_q4_0 *) x[r] + b0, m, ydv, sc[r]);
        for (int i = 0; i < m; i++) {
            const int b = b0 + i;
            gs_pf_step(pf);
            gs_pf_step(pf);
            const __m256i yq = _mm256_loadu_si256((const __m256i *) yb[b].qs);
            const __m256i nb8 = _mm256_loadu_si256(&neg[b]);
            for (int r = 0; r < R; r++) {
                const block_q4_0 * xb = (const block_q4_0 *) x[r] + b;
                const __m256i dot = _mm256_dpbusd_epi32(nb8, nibbles32(xb->qs), yq);
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(sc[r][i]), _mm256_cvtepi32_ps(dot), acc[r]);
            }
        }
    }
    for (int r = 0; r < R; r++) s[r] = gs256_hsum(acc[r]);
}

void gs_bundle_dots_q4_0_avx512(int n, int nr, float * s, const uint8_t * const * x, const void * y,
                                const void * aux, gs_pf_cursor * pf) {
    switch (nr) {
        case 1: dots_rows(1, n, s, x, y, aux, pf); break;
        case 2: dots_rows(2, n, s, x, y, aux, pf); break;
        case 3: dots_rows(3, n, s, x, y, aux, pf); break;
        default: dots_rows(4, n, s, x, y, aux, pf); break;
    }
}

/* The partial output y is kept in GS_BUNDLE_PERM order (sparse.h): per
 * 16-element half of a block, position 4 (w % 4) + w / 4 holds weight w of
 * that half. Then one 128-bit broadcast of the 16 weight bytes puts in
 * position p the 32-bit word p % 4 of qs, holding the bytes of weights
 * 4 (p % 4) .. 4 (p % 4) + 3, and a per-lane shift by 8 (p / 4) (+ 4 for the
 * high half) brings the wanted nibble down: no shuffle per weight. The
 * nibble q becomes the float q - 8 exactly as (2^23 + q) - (2^23 + 8). */
void gs_bundle_axpy_q4_0_avx512(int n, int nr, const float * a, const uint8_t * const * x, float * y,
                                gs_pf_cursor * pf) {
    const __m512i sh_lo = _mm512_setr_epi32(0, 0, 0, 0, 8, 8, 8, 8, 16, 16, 16, 16, 24, 24, 24, 24);
    const __m512i sh_hi = _mm512_add_epi32(sh_lo, _mm512_set1_epi32(4));
    const __m512i m4 = _mm512_set1_epi32(0x0F), magic = _mm512_set1_epi32(0x4B000000);
    const __m512 bias = _mm512_set1_ps(8388616.0f);   /* 2^23 + 8 */
    const int nb = n / 32;
    float sc[NR][8];
    for (int b0 = 0; b0 < nb; b0 += 8) {
        const int m = nb - b0 < 8 ? nb - b0 : 8;
        for (int r = 0; r < nr; r++) scales8((const block_q4_0 *) x[r] + b0, m, _mm256_set1_ps(a[r]), sc[r]);
        for (int i = 0; i < m; i++, y += 32) {
            gs_pf_step(pf);
            gs_pf_step(pf);
            __m512 y0 = _mm512_loadu_ps(y), y1 = _mm512_loadu_ps(y + 16);
            for (int r = 0; r < nr; r++) {
                const block_q4_0 * xb = (const block_q4_0 *) x[r] + b0 + i;
                const __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *) xb->qs));
                /* (v >> shift) & 15 | magic: ternary logic (A & B) | C */
                const __m512i lo = _mm512_ternarylogic_epi32(_mm512_srlv_epi32(v, sh_lo), m4, magic, 0xEA);
                const __m512i hi = _mm512_ternarylogic_epi32(_mm512_srlv_epi32(v, sh_hi), m4, magic, 0xEA);
                const __m512 scr = _mm512_set1_ps(sc[r][i]);
                y0 = _mm512_fmadd_ps(scr, _mm512_sub_ps(_mm512_castsi512_ps(lo), bias), y0);
                y1 = _mm512_fmadd_ps(scr, _mm512_sub_ps(_mm512_castsi512_ps(hi), bias), y1);
            }
            _mm512_storeu_ps(y, y0);
            _mm512_storeu_ps(y + 16, y1);
        }
    }
}
