/*
 * vec_avx512_blocks.h - helpers of the AVX-512 kernels of the 32-weight
 * block types (vec_avx512_q.c, vec_avx512_tile.c): per-block unpacking into
 * weight order, and "window" loads that read 4 consecutive blocks of a row
 * (a step) with 2 loads and cut fields out of them with vpermt2w (every
 * block field sits at an even offset).
 *
 * Index tables give, for output word w, the source word (>= 32: second
 * source). Loads take `avail`, the bytes that may be read at p (>= the
 * load size: a plain load; less: a byte-masked load, missing bytes 0).
 */
#ifndef GS_VEC_AVX512_BLOCKS_H
#define GS_VEC_AVX512_BLOCKS_H

#include "vec_avx512.h"

#include <limits.h>

#define GS_FULL INT_MAX   /* `avail` of a step that is wholly in bounds */

#define R8_(F, o) F(o), F(o + 1), F(o + 2), F(o + 3), F(o + 4), F(o + 5), F(o + 6), F(o + 7)
#define R32_(F) { R8_(F, 0), R8_(F, 8), R8_(F, 16), R8_(F, 24) }
/* word w of a raw register: block w / 8 of the step, word w % 8 of its 16
 * nibble bytes (the block's qs in 128-bit lane w / 8) */
#define BLK_(w) ((w) >> 3)
#define WRD_(w) ((w) & 7)
/* word 4k + r of a scale register: block k of the step, row r */
#define SB_(w) (((w) >> 2) & 3)

/* Q4_0, 18-byte blocks: d of rows 0/2 (first source) and 1/3 (second
 * source) from bytes [0, 64) of the step (the nibbles are loaded per block) */
#define Q4_0_D_(w) (((w) & 1) * 32 + 9 * SB_(w))
/* Q4_1, 20-byte blocks: d and m as Q4_0_D */
#define Q4_1_D_(w) (((w) & 1) * 32 + 10 * SB_(w))
#define Q4_1_M_(w) (Q4_1_D_(w) + 1)
/* Q5_0, 22-byte blocks, window = [0, 64) + [56, 88); d of block k in words
 * 4k..4k+3 (one row, both sources) */
#define Q5_0_QS_(w) (11 * BLK_(w) + 3 + WRD_(w) < 32 ? 11 * BLK_(w) + 3 + WRD_(w) : 11 * BLK_(w) + 7 + WRD_(w))
#define Q5_0_DR_(w) (11 * SB_(w) < 32 ? 11 * SB_(w) : 11 * SB_(w) + 4)
/* Q5_1, 24-byte blocks, window = [0, 64) + [64, 96); d, m per block k */
#define Q5_1_QS_(w) (12 * BLK_(w) + 4 + WRD_(w))
#define Q5_1_DR_(w) (12 * SB_(w))
#define Q5_1_MR_(w) (12 * SB_(w) + 1)
/* block_q8_0, 34 bytes, window = [0, 64) + [64, 128): d of block k */
#define Q8_0_DR_(w) (17 * SB_(w))
/* block_q8_1, 36 bytes, window = [0, 64) + [64, 128): d and s of block k */
#define Q8_1_DR_(w) (18 * SB_(w))
#define Q8_1_SR_(w) (18 * SB_(w) + 1)

static const int16_t gs_idx_q4_0_d[32] __attribute__((aligned(64))) = R32_(Q4_0_D_);
static const int16_t gs_idx_q4_1_d[32] __attribute__((aligned(64))) = R32_(Q4_1_D_);
static const int16_t gs_idx_q4_1_m[32] __attribute__((aligned(64))) = R32_(Q4_1_M_);
static const int16_t gs_idx_q5_0_qs[32] __attribute__((aligned(64))) = R32_(Q5_0_QS_);
static const int16_t gs_idx_q5_0_dr[32] __attribute__((aligned(64))) = R32_(Q5_0_DR_);
static const int16_t gs_idx_q5_1_qs[32] __attribute__((aligned(64))) = R32_(Q5_1_QS_);
static const int16_t gs_idx_q5_1_dr[32] __attribute__((aligned(64))) = R32_(Q5_1_DR_);
static const int16_t gs_idx_q5_1_mr[32] __attribute__((aligned(64))) = R32_(Q5_1_MR_);
static const int16_t gs_idx_q8_0_dr[32] __attribute__((aligned(64))) = R32_(Q8_0_DR_);
static const int16_t gs_idx_q8_1_dr[32] __attribute__((aligned(64))) = R32_(Q8_1_DR_);
static const int16_t gs_idx_q8_1_sr[32] __attribute__((aligned(64))) = R32_(Q8_1_SR_);

#define GS_IDX(t) _mm512_load_si512((const void *) (t))
#define GS_PERM(a, idx, b) _mm512_permutex2var_epi16((a), (idx), (b))

static inline __mmask64 gs_first_bytes(int avail) {
    return avail >= 64 ? ~0ull : avail <= 0 ? 0 : (1ull << avail) - 1;
}

static inline __m512i gs_ld64(const uint8_t * p, int avail) {
    return avail >= 64 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(gs_first_bytes(avail), p);
}

/* 32 / 16 bytes into the low lanes (the other lanes undefined) */
static inline __m512i gs_ld32(const uint8_t * p, int avail) {
    return _mm512_castsi256_si512(avail >= 32 ? _mm256_loadu_si256((const __m256i *) p)
                                              : _mm256_maskz_loadu_epi8((__mmask32) gs_first_bytes(avail), p));
}

static inline __m512i gs_ld16(const uint8_t * p, int avail) {
    return _mm512_castsi128_si512(avail >= 16 ? _mm_loadu_si128((const __m128i *) p)
                                              : _mm_maskz_loadu_epi8((__mmask16) gs_first_bytes(avail), p));
}

/* words 0..15 (halves) -> floats */
static inline __m512 gs_halves(__m512i w) {
    return _mm512_cvtph_ps(_mm512_castsi512_si256(w));
}

/* Scale words of 4 rows: t01 holds rows 0/1 at words 4k+0/4k+1, t23 rows
 * 2/3 at 4k+2/4k+3 -> floats, lane 4k + r. */
static inline __m512 gs_scales4(__m512i t01, __m512i t23) {
    return gs_halves(_mm512_mask_blend_epi16(0xCCCCCCCCu, t01, t23));
}

/* Four registers with block k's value in words 4k..4k+3 -> word 4k + r
 * from w[r]. */
static inline __m512i gs_pick4_epi16(const __m512i w[4]) {
    const __m512i w01 = _mm512_mask_blend_epi16(0x22222222u, w[0], w[1]);
    const __m512i w23 = _mm512_mask_blend_epi16(0x88888888u, w[2], w[3]);
    return _mm512_mask_blend_epi16(0xCCCCCCCCu, w01, w23);
}

/* Block k of two raw registers a, c (16 nibble bytes per block, block k in
 * 128-bit lane k) as weights in order: [a low nibbles, a high, c low, c high]. */
static inline __m512i gs_nibbles_pair(__m512i a, __m512i c, int k) {
    const __m512i sel = _mm512_setr_epi64(2 * k, 2 * k + 1, 2 * k, 2 * k + 1,
                                          8 + 2 * k, 9 + 2 * k, 8 + 2 * k, 9 + 2 * k);
    const __m512i q = _mm512_permutex2var_epi64(a, sel, c);
    return _mm512_and_si512(_mm512_srlv_epi64(q, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4)),
                            _mm512_set1_epi8(0x0F));
}

/* The 32 weights of one 16-byte nibble block in order: [low, high]. */
static inline __m256i gs256_nibbles(const uint8_t * qs) {
    const __m128i q = _mm_loadu_si128((const __m128i *) qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
}

/* Add 16 to the weight bytes whose bit is set in the little-endian qh words
 * (Q5 high bits): 32 bits per block. */
static inline __m256i gs256_add_high(__m256i q, const uint8_t * qh) {
    uint32_t h;
    memcpy(&h, qh, 4);
    return _mm256_mask_add_epi8(q, _cvtu32_mask32(h), q, _mm256_set1_epi8(16));
}

static inline __m512i gs512_add_high(__m512i q, const uint8_t * qh_a, const uint8_t * qh_c) {
    uint32_t a, c;
    memcpy(&a, qh_a, 4);
    memcpy(&c, qh_c, 4);
    return _mm512_mask_add_epi8(q, _cvtu64_mask64((uint64_t) a | (uint64_t) c << 32), q, _mm512_set1_epi8(16));
}

#endif /* GS_VEC_AVX512_BLOCKS_H */
