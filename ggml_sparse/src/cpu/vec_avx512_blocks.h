/*
 * vec_avx512_blocks.h - the "4-block" register layout shared by the AVX-512
 * multi-row kernels (vec_avx512_gemv.c, vec_avx512_tile.c).
 *
 * A step covers 4 consecutive 32-weight blocks. Its weights (or int8
 * activations) are held in two 512-bit registers: "lo" = bytes of weights
 * 0..15 of each block, "hi" = weights 16..31, block k in the 128-bit lane k.
 * Both are cut out of the step's byte range with one vpermt2w each (every
 * block field sits at an even offset), so vpdpbusd leaves 4 partial int32
 * sums per block. reduce4() then transposes and adds 4 such registers (4
 * weight rows of one step, or 4 steps of one row) into one register of 16
 * block sums, which is scaled in float once for 16 blocks.
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
/* word w of a lo/hi register: block w / 8, word w % 8 of its 16 bytes */
#define BLK_(w) ((w) >> 3)
#define WRD_(w) ((w) & 7)
/* word 4b + r of a scale register: block b of the step, row (or step) r */
#define SB_(w) (((w) >> 2) & 3)

/* Q4_0, 18-byte blocks: qs from bytes [0, 64) and [56, 72) of the step */
#define Q4_0_QS_(w) (9 * BLK_(w) + 1 + WRD_(w) < 32 ? 9 * BLK_(w) + 1 + WRD_(w) : 9 * BLK_(w) + 5 + WRD_(w))
/* d of two registers' steps at words 4b + {0, 2} (first) and 4b + {1, 3}
 * (second source), both from bytes [0, 64) */
#define Q4_0_D_(w) (((w) & 1) * 32 + 9 * SB_(w))
/* d of block b replicated in words 4b..4b+3 (one source) */
#define Q4_0_DR_(w) (9 * SB_(w))
/* Q4_1, 20-byte blocks: qs from [0, 64) and [64, 80); d and m as Q4_0_D */
#define Q4_1_QS_(w) (10 * BLK_(w) + 2 + WRD_(w))
#define Q4_1_D_(w) (((w) & 1) * 32 + 10 * SB_(w))
#define Q4_1_M_(w) (Q4_1_D_(w) + 1)
#define Q4_1_DR_(w) (10 * SB_(w))
#define Q4_1_MR_(w) (10 * SB_(w) + 1)
/* block_q8_0, 34 bytes: lo from [0, 64) + [64, 128), hi from [16, 80) +
 * [72, 136), d of block b replicated in words 4b..4b+3 from [0, 128) */
#define Q8_0_LO_(w) (17 * BLK_(w) + 1 + WRD_(w))
#define Q8_0_HI_(w) (Q8_0_LO_(w) < 32 ? Q8_0_LO_(w) : Q8_0_LO_(w) + 4)
#define Q8_0_D_(w) (17 * SB_(w))
/* block_q8_1, 40 bytes: lo of blocks 0..2 from [8, 72) + [72, 136), hi from
 * [24, 88) + [88, 152); block 3 is inserted separately */
#define Q8_1_QS_(w) (BLK_(w) < 3 ? 20 * BLK_(w) + WRD_(w) : 0)

static const int16_t gs_idx_q4_0_qs[32] __attribute__((aligned(64))) = R32_(Q4_0_QS_);
static const int16_t gs_idx_q4_0_d[32] __attribute__((aligned(64))) = R32_(Q4_0_D_);
static const int16_t gs_idx_q4_0_dr[32] __attribute__((aligned(64))) = R32_(Q4_0_DR_);
static const int16_t gs_idx_q4_1_qs[32] __attribute__((aligned(64))) = R32_(Q4_1_QS_);
static const int16_t gs_idx_q4_1_dr[32] __attribute__((aligned(64))) = R32_(Q4_1_DR_);
static const int16_t gs_idx_q4_1_mr[32] __attribute__((aligned(64))) = R32_(Q4_1_MR_);
static const int16_t gs_idx_q4_1_d[32] __attribute__((aligned(64))) = R32_(Q4_1_D_);
static const int16_t gs_idx_q4_1_m[32] __attribute__((aligned(64))) = R32_(Q4_1_M_);
static const int16_t gs_idx_q8_0_lo[32] __attribute__((aligned(64))) = R32_(Q8_0_LO_);
static const int16_t gs_idx_q8_0_hi[32] __attribute__((aligned(64))) = R32_(Q8_0_HI_);
static const int16_t gs_idx_q8_0_d[32] __attribute__((aligned(64))) = R32_(Q8_0_D_);
static const int16_t gs_idx_q8_1_qs[32] __attribute__((aligned(64))) = R32_(Q8_1_QS_);
/* block_q8_1 d (dword 10b) and s (dword 10b + 1), replicated in lanes
 * 4b..4b+3, from bytes [0, 128) */
static const int32_t gs_idx_q8_1_d[16] __attribute__((aligned(64))) = {
    0, 0, 0, 0, 10, 10, 10, 10, 20, 20, 20, 20, 30, 30, 30, 30 };
static const int32_t gs_idx_q8_1_s[16] __attribute__((aligned(64))) = {
    1, 1, 1, 1, 11, 11, 11, 11, 21, 21, 21, 21, 31, 31, 31, 31 };

#define GS_IDX(t) _mm512_load_si512((const void *) (t))
#define GS_PERM(a, idx, b) _mm512_permutex2var_epi16((a), (idx), (b))

static inline __mmask64 gs_first_bytes(int avail) {
    return avail >= 64 ? ~0ull : avail <= 0 ? 0 : (1ull << avail) - 1;
}

static inline __m512i gs_ld64(const uint8_t * p, int avail) {
    return avail >= 64 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(gs_first_bytes(avail), p);
}

/* 16 bytes into the low lane (the other lanes undefined) */
static inline __m512i gs_ld16(const uint8_t * p, int avail) {
    return _mm512_castsi128_si512(avail >= 16 ? _mm_loadu_si128((const __m128i *) p)
                                              : _mm_maskz_loadu_epi8((__mmask16) gs_first_bytes(avail), p));
}

/* lane 4b + r = sum of the 4 int32 of 128-bit lane b of p[r] */
static inline __m512i gs_reduce4(const __m512i p[4]) {
    const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[0], p[1]), _mm512_unpackhi_epi32(p[0], p[1]));
    const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2], p[3]), _mm512_unpackhi_epi32(p[2], p[3]));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
}

/* words 0..15 (halves) -> floats */
static inline __m512 gs_halves(__m512i w) {
    return _mm512_cvtph_ps(_mm512_castsi512_si256(w));
}

/* Scale halves of 4 rows (or steps): t01 holds 0/1 at words 4b+0/4b+1,
 * t23 holds 2/3 at words 4b+2/4b+3. */
static inline __m512 gs_scales4(__m512i t01, __m512i t23) {
    return gs_halves(_mm512_mask_blend_epi16(0xCCCCCCCCu, t01, t23));
}

/* Four registers with a value replicated in words 4b..4b+3 -> word 4b + r
 * from w[r]. */
static inline __m512i gs_pick4_epi16(const __m512i w[4]) {
    const __m512i w01 = _mm512_mask_blend_epi16(0x22222222u, w[0], w[1]);
    const __m512i w23 = _mm512_mask_blend_epi16(0x88888888u, w[2], w[3]);
    return _mm512_mask_blend_epi16(0xCCCCCCCCu, w01, w23);
}

/* lo/hi bytes and d (replicated per block, words 4b..4b+3) of 4 block_q8_0 */
static inline void gs_q8_0_step(const uint8_t * p, int avail, __m512i * lo, __m512i * hi, __m512i * dw) {
    const __m512i a = gs_ld64(p, avail), b = gs_ld64(p + 64, avail - 64);
    *lo = GS_PERM(a, GS_IDX(gs_idx_q8_0_lo), b);
    *dw = GS_PERM(a, GS_IDX(gs_idx_q8_0_d), b);
    *hi = GS_PERM(gs_ld64(p + 16, avail - 16), GS_IDX(gs_idx_q8_0_hi), gs_ld64(p + 72, avail - 72));
}

/* lo/hi bytes, d and s (f32, replicated in lanes 4b..4b+3) of 4 block_q8_1 */
static inline void gs_q8_1_step(const uint8_t * p, int avail, __m512i * lo, __m512i * hi,
                                __m512 * d, __m512 * s) {
    __m512i l = GS_PERM(gs_ld64(p + 8, avail - 8), GS_IDX(gs_idx_q8_1_qs), gs_ld64(p + 72, avail - 72));
    __m512i h = GS_PERM(gs_ld64(p + 24, avail - 24), GS_IDX(gs_idx_q8_1_qs), gs_ld64(p + 88, avail - 88));
    if (avail >= 4 * (int) sizeof(block_q8_1)) {
        l = _mm512_inserti32x4(l, _mm_loadu_si128((const __m128i *) (p + 128)), 3);
        h = _mm512_inserti32x4(h, _mm_loadu_si128((const __m128i *) (p + 144)), 3);
    } else {  /* block 3 is missing: zero its lane */
        l = _mm512_maskz_mov_epi32(0x0FFF, l);
        h = _mm512_maskz_mov_epi32(0x0FFF, h);
    }
    const __m512 f0 = _mm512_castsi512_ps(gs_ld64(p, avail));
    const __m512 f1 = _mm512_castsi512_ps(gs_ld64(p + 64, avail - 64));
    *lo = l;
    *hi = h;
    *d = _mm512_permutex2var_ps(f0, GS_IDX(gs_idx_q8_1_d), f1);
    *s = _mm512_permutex2var_ps(f0, GS_IDX(gs_idx_q8_1_s), f1);
}

#endif /* GS_VEC_AVX512_BLOCKS_H */
