/*
 * vec_avx512_gemv.c - AVX-512 VNNI matrix x vector kernels of the 32-weight
 * block types Q4_0, Q8_0 (Q8_0 activations) and Q4_1 (Q8_1): the nc == 1
 * case of their tile kernels (decode).
 *
 * Weight rows are read one after the other, so the whole matrix is a single
 * sequential stream (the hardware prefetcher keeps up with that, not with
 * several interleaved rows). To make a lone row cheap:
 *  - the activation row is expanded once per call into act_group records
 *    (the 4-block lo/hi layout of vec_avx512_blocks.h, scales and block sums
 *    precomputed), so a weight block costs its own unpacking and vpdpbusd;
 *  - 4 steps (16 blocks) of the row are reduced together by gs_reduce4 and
 *    scaled with one multiply-add.
 * The activation row is expanded in chunks of CHUNK_GROUPS groups (on the
 * stack); rows longer than a chunk are processed chunk by chunk.
 */
#include "vec_avx512_blocks.h"

#define GROUP 16          /* blocks per group: 4 steps                     */
#define CHUNK_GROUPS 32   /* 512 blocks = 16384 weights, 22.5 KiB of stack */

/* One group of an expanded activation row. lo[j] / hi[j]: step j (blocks
 * 4j..4j+3). Per block, in lane 4b + j for block 4j + b (the order
 * gs_reduce4 leaves a row's 16 block sums in): d = d_y, s = d_y * sum(q)
 * (Q8_1), sum = sum(q) (Q8_0). Missing blocks (row end) are all zero. */
typedef struct {
    __m512i lo[4], hi[4];
    __m512 d, s;
    __m512i sum;
} act_group;

static inline __m512 pick4_ps(const __m512 v[4]) {
    const __m512 a = _mm512_mask_blend_ps(0x2222, v[0], v[1]);
    const __m512 b = _mm512_mask_blend_ps(0x8888, v[2], v[3]);
    return _mm512_mask_blend_ps(0xCCCC, a, b);
}

/* ---- activation expansion: nb blocks at y -> ng groups ------------------- */
static void expand_q8_0(const uint8_t * y, int nb, act_group * g, int ng) {
    const __m512i ones = _mm512_set1_epi8(1), z = _mm512_setzero_si512();
    for (int i = 0; i < ng; i++) {
        __m512i sums[4], dw[4];
        for (int j = 0; j < 4; j++) {
            const int b = GROUP * i + 4 * j;
            if (b >= nb) {
                g[i].lo[j] = g[i].hi[j] = sums[j] = dw[j] = z;
                continue;
            }
            gs_q8_0_step(y + (size_t) b * sizeof(block_q8_0), (nb - b) * (int) sizeof(block_q8_0),
                         &g[i].lo[j], &g[i].hi[j], &dw[j]);
            sums[j] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, ones, g[i].lo[j]), ones, g[i].hi[j]);
        }
        g[i].sum = gs_reduce4(sums);
        g[i].d = gs_halves(gs_pick4_epi16(dw));
        g[i].s = _mm512_setzero_ps();
    }
}

static void expand_q8_1(const uint8_t * y, int nb, act_group * g, int ng) {
    for (int i = 0; i < ng; i++) {
        __m512 d[4], s[4];
        for (int j = 0; j < 4; j++) {
            const int b = GROUP * i + 4 * j;
            if (b >= nb) {
                g[i].lo[j] = g[i].hi[j] = _mm512_setzero_si512();
                d[j] = s[j] = _mm512_setzero_ps();
                continue;
            }
            gs_q8_1_step(y + (size_t) b * sizeof(block_q8_1), (nb - b) * (int) sizeof(block_q8_1),
                         &g[i].lo[j], &g[i].hi[j], &d[j], &s[j]);
        }
        g[i].d = pick4_ps(d);
        g[i].s = pick4_ps(s);
        g[i].sum = _mm512_setzero_si512();
    }
}

/* ---- one group (16 blocks) of one weight row; `avail` bytes of the row
 * remain at x (GS_FULL: the whole group) ------------------------------------ */
static inline __attribute__((always_inline)) __m512
group_q4_0(const uint8_t * x, int avail, const act_group * g, __m512 acc) {
    const __m512i m0F = _mm512_set1_epi8(0x0F), z = _mm512_setzero_si512();
    __m512i p[4], x0[4];
    for (int j = 0; j < 4; j++) {
        const int a = avail - 4 * (int) sizeof(block_q4_0) * j;
        if (a <= 0) {
            p[j] = x0[j] = z;
            continue;
        }
        const uint8_t * xs = x + 4 * sizeof(block_q4_0) * j;
        x0[j] = gs_ld64(xs, a);
        const __m512i q = GS_PERM(x0[j], GS_IDX(gs_idx_q4_0_qs), gs_ld16(xs + 56, a - 56));
        p[j] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, _mm512_and_si512(q, m0F), g->lo[j]),
                                   _mm512_and_si512(_mm512_srli_epi16(q, 4), m0F), g->hi[j]);
    }
    /* (q - 8) . y = q . y - 8 sum(y) */
    const __m512i dot = _mm512_sub_epi32(gs_reduce4(p), _mm512_slli_epi32(g->sum, 3));
    const __m512 dx = gs_scales4(GS_PERM(x0[0], GS_IDX(gs_idx_q4_0_d), x0[1]),
                                 GS_PERM(x0[2], GS_IDX(gs_idx_q4_0_d), x0[3]));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dx, g->d), acc);
}

static inline __attribute__((always_inline)) __m512
group_q8_0(const uint8_t * x, int avail, const act_group * g, __m512 acc) {
    const __m512i c80 = _mm512_set1_epi8((char) 0x80), z = _mm512_setzero_si512();
    __m512i p[4], dw[4];
    for (int j = 0; j < 4; j++) {
        const int a = avail - 4 * (int) sizeof(block_q8_0) * j;
        if (a <= 0) {
            p[j] = dw[j] = z;
            continue;
        }
        __m512i lo, hi;
        gs_q8_0_step(x + 4 * sizeof(block_q8_0) * j, a, &lo, &hi, &dw[j]);
        /* x + 128 is unsigned: x . y = (x + 128) . y - 128 sum(y) */
        p[j] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, _mm512_xor_si512(lo, c80), g->lo[j]),
                                   _mm512_xor_si512(hi, c80), g->hi[j]);
    }
    const __m512i dot = _mm512_sub_epi32(gs_reduce4(p), _mm512_slli_epi32(g->sum, 7));
    const __m512 dx = gs_halves(gs_pick4_epi16(dw));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dx, g->d), acc);
}

static inline __attribute__((always_inline)) __m512
group_q4_1(const uint8_t * x, int avail, const act_group * g, __m512 acc) {
    const __m512i m0F = _mm512_set1_epi8(0x0F), z = _mm512_setzero_si512();
    __m512i p[4], x0[4];
    for (int j = 0; j < 4; j++) {
        const int a = avail - 4 * (int) sizeof(block_q4_1) * j;
        if (a <= 0) {
            p[j] = x0[j] = z;
            continue;
        }
        const uint8_t * xs = x + 4 * sizeof(block_q4_1) * j;
        x0[j] = gs_ld64(xs, a);
        const __m512i q = GS_PERM(x0[j], GS_IDX(gs_idx_q4_1_qs), gs_ld16(xs + 64, a - 64));
        p[j] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, _mm512_and_si512(q, m0F), g->lo[j]),
                                   _mm512_and_si512(_mm512_srli_epi16(q, 4), m0F), g->hi[j]);
    }
    const __m512 dx = gs_scales4(GS_PERM(x0[0], GS_IDX(gs_idx_q4_1_d), x0[1]),
                                 GS_PERM(x0[2], GS_IDX(gs_idx_q4_1_d), x0[3]));
    const __m512 mx = gs_scales4(GS_PERM(x0[0], GS_IDX(gs_idx_q4_1_m), x0[1]),
                                 GS_PERM(x0[2], GS_IDX(gs_idx_q4_1_m), x0[3]));
    /* (d q + m) . y = d d_y (q . yq) + m s_y */
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(gs_reduce4(p)), _mm512_mul_ps(dx, g->d), acc);
    return _mm512_fmadd_ps(mx, g->s, acc);
}

/* ---- one step (4 blocks) of one weight row, step j of group g: for the
 * last 1 or 2 steps of a row, cheaper than a group. The 4 partial sums of
 * each block are scaled by that block's d_x * d_y replicated over them
 * (offsets: a quarter of the block's per lane) instead of being reduced. */
#define REP(v, j) _mm512_permute_ps((v), (j) * 0x55)            /* lane 4b+j -> 4b..4b+3 */
#define REPI(v, j) _mm512_shuffle_epi32((v), (_MM_PERM_ENUM) ((j) * 0x55))

static inline __attribute__((always_inline)) __m512
step_q4_0(const uint8_t * x, int avail, const act_group * g, int j, __m512 acc) {
    const __m512i m0F = _mm512_set1_epi8(0x0F), z = _mm512_setzero_si512();
    const __m512i x0 = gs_ld64(x, avail);
    const __m512i q = GS_PERM(x0, GS_IDX(gs_idx_q4_0_qs), gs_ld16(x + 56, avail - 56));
    __m512i p = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, _mm512_and_si512(q, m0F), g->lo[j]),
                                    _mm512_and_si512(_mm512_srli_epi16(q, 4), m0F), g->hi[j]);
    p = _mm512_sub_epi32(p, _mm512_slli_epi32(REPI(g->sum, j), 1));        /* 8 sum / 4 lanes */
    const __m512 dx = gs_halves(GS_PERM(x0, GS_IDX(gs_idx_q4_0_dr), x0));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dx, REP(g->d, j)), acc);
}

static inline __attribute__((always_inline)) __m512
step_q8_0(const uint8_t * x, int avail, const act_group * g, int j, __m512 acc) {
    const __m512i c80 = _mm512_set1_epi8((char) 0x80), z = _mm512_setzero_si512();
    __m512i lo, hi, dw;
    gs_q8_0_step(x, avail, &lo, &hi, &dw);
    __m512i p = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, _mm512_xor_si512(lo, c80), g->lo[j]),
                                    _mm512_xor_si512(hi, c80), g->hi[j]);
    p = _mm512_sub_epi32(p, _mm512_slli_epi32(REPI(g->sum, j), 5));        /* 128 sum / 4 lanes */
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(gs_halves(dw), REP(g->d, j)), acc);
}

static inline __attribute__((always_inline)) __m512
step_q4_1(const uint8_t * x, int avail, const act_group * g, int j, __m512 acc) {
    const __m512i m0F = _mm512_set1_epi8(0x0F), z = _mm512_setzero_si512();
    const __m512i x0 = gs_ld64(x, avail);
    const __m512i q = GS_PERM(x0, GS_IDX(gs_idx_q4_1_qs), gs_ld16(x + 64, avail - 64));
    const __m512i p = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, _mm512_and_si512(q, m0F), g->lo[j]),
                                          _mm512_and_si512(_mm512_srli_epi16(q, 4), m0F), g->hi[j]);
    const __m512 dx = gs_halves(GS_PERM(x0, GS_IDX(gs_idx_q4_1_dr), x0));
    const __m512 mx = gs_halves(GS_PERM(x0, GS_IDX(gs_idx_q4_1_mr), x0));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dx, REP(g->d, j)), acc);
    return _mm512_mask3_fmadd_ps(mx, REP(g->s, j), acc, 0x1111);            /* m s once per block */
}

/* s[r] = dot(row r, y) for nr rows of n weights (rows bx bytes apart). A
 * row is full groups, then its last 1..15 blocks: as a (masked) group when
 * they span 3 or 4 steps, step by step otherwise. */
#define DEFINE_GEMV(name, GROUPFN, STEPFN, EXPAND, XB, YB)                                     \
void gs_avx512_gemv_##name(int n, float * s, const void * vx, size_t bx, const void * vy, int nr) { \
    act_group g[CHUNK_GROUPS];                                                                 \
    const int nb = n / 32;                                                                     \
    for (int b0 = 0; b0 < nb; b0 += CHUNK_GROUPS * GROUP) {                                    \
        const int cb = nb - b0 < CHUNK_GROUPS * GROUP ? nb - b0 : CHUNK_GROUPS * GROUP;        \
        const int full = cb / GROUP, ng = (cb + GROUP - 1) / GROUP;                            \
        const int rest = cb - full * GROUP, rest_steps = (rest + 3) / 4;                       \
        EXPAND((const uint8_t *) vy + (size_t) b0 * (YB), cb, g, ng);                          \
        for (int r = 0; r < nr; r++) {                                                         \
            const uint8_t * x = (const uint8_t *) vx + (size_t) r * bx + (size_t) b0 * (XB);   \
            __m512 acc = _mm512_setzero_ps();                                                  \
            for (int i = 0; i < full; i++) acc = GROUPFN(x + (size_t) i * GROUP * (XB), GS_FULL, &g[i], acc); \
            const uint8_t * xr = x + (size_t) full * GROUP * (XB);                             \
            if (rest_steps >= 3) {                                                             \
                acc = GROUPFN(xr, rest * (int) (XB), &g[full], acc);                           \
            } else {                                                                           \
                for (int j = 0; j < rest_steps; j++)                                           \
                    acc = STEPFN(xr + 4 * j * (XB), (rest - 4 * j) * (int) (XB), &g[full], j, acc); \
            }                                                                                  \
            const float v = _mm512_reduce_add_ps(acc);                                         \
            s[r] = b0 == 0 ? v : s[r] + v;                                                     \
        }                                                                                      \
    }                                                                                          \
}

DEFINE_GEMV(q4_0, group_q4_0, step_q4_0, expand_q8_0, sizeof(block_q4_0), sizeof(block_q8_0))
DEFINE_GEMV(q8_0, group_q8_0, step_q8_0, expand_q8_0, sizeof(block_q8_0), sizeof(block_q8_0))
DEFINE_GEMV(q4_1, group_q4_1, step_q4_1, expand_q8_1, sizeof(block_q4_1), sizeof(block_q8_1))
