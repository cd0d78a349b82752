/*
 * vec_avx512_tile.c - AVX-512 VNNI tile kernels (gs_vec_dot_tile_fn) of the
 * 32-weight block types Q4_0, Q5_0, Q8_0 (Q8_0 activations) and Q4_1, Q5_1
 * (Q8_1). Every (weight row, activation row) result is bit-identical to the
 * single-row kernels and to vec_generic.c (llama.cpp's x86 order: 8 float
 * lanes per dot, one fused multiply-add per block, in block order).
 *
 * A micro-kernel computes 4 weight rows x NC (1..4) activation rows. Each
 * 512-bit accumulator holds the 8 lanes of two weight rows (a "pair") for
 * one activation row, so 2 x NC independent chains run side by side. Per
 * step of 4 blocks:
 *  - the weight side is prepared once for all activation rows: per block
 *    and pair one register holds both rows' weights in order (Q4_0/Q4_1:
 *    two broadcast loads and one AND, the high nibbles left 16 x too large
 *    and compensated exactly in their scales, see nibbles16_pair; the other
 *    types: each row's 4 blocks read with two loads and cut by vpermt2w,
 *    vec_avx512_blocks.h); the scales d_x (and Q4_1/Q5_1 mins) of all 16
 *    (block, row) pairs sit in one float register;
 *  - per activation row: d_y of the 4 blocks, d_x * d_y for all 16 pairs in
 *    one multiply, and per block one broadcast of its 32 activation bytes
 *    shared by both pairs.
 * Decode (one activation row) takes the 4 rows from the 4 quarters of the
 * row range: each is then a sequential stream, which the hardware
 * prefetcher follows (it does not follow interleaved adjacent rows).
 * A last partial step loads with byte masks and stops at the last block.
 */
#include "sparse.h"
#include "vec_avx512_blocks.h"

#define TR 4     /* weight rows per micro-kernel (two pairs) */
#define TC 4     /* activation rows per micro-kernel         */

/* ---- weight side of a step: blocks k < kmax of rows xr[r] + xo ----------
 * q[p][k]: block k of rows 2p, 2p+1 as unsigned weight bytes in order;
 * dx / mx: lane 4k + r = d / m of block k of row r. `avail` bytes remain in
 * each row at xo. */
typedef struct {
    __m512i q[2][4];
    __m512 dx, mx;
} wstep;

/* Q4_0 / Q4_1: the 16 nibble bytes at a and c (block k of the pair's two
 * rows) as [a low nibbles, 16 x a high nibbles, c low, 16 x c high]: two
 * broadcast loads, one insert and one AND, no shifts. The high half of each
 * row's weights is 16 times too large; so are its integer dot products,
 * which stay exact, and the scales of those lanes are divided by 16 (exact,
 * see hi16_scale), so every fused multiply-add sees the same product. */
static inline __m512i nibbles16_pair(const uint8_t * a, const uint8_t * c) {
    const __m256i qa = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) a));
    const __m256i qc = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) c));
    const __m512i mask = _mm512_setr_epi32(0x0F0F0F0F, 0x0F0F0F0F, 0x0F0F0F0F, 0x0F0F0F0F,
                                           (int) 0xF0F0F0F0, (int) 0xF0F0F0F0, (int) 0xF0F0F0F0, (int) 0xF0F0F0F0,
                                           0x0F0F0F0F, 0x0F0F0F0F, 0x0F0F0F0F, 0x0F0F0F0F,
                                           (int) 0xF0F0F0F0, (int) 0xF0F0F0F0, (int) 0xF0F0F0F0, (int) 0xF0F0F0F0);
    return _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(qa), qc, 1), mask);
}

static inline __attribute__((always_inline)) void
w_q4_0(const uint8_t * const * xr, size_t xo, int avail, int kmax, wstep * w) {
    __m512i x0[TR];
    for (int r = 0; r < TR; r++) x0[r] = gs_ld64(xr[r] + xo, avail);
    for (int k = 0; k < kmax; k++) {
        for (int p = 0; p < 2; p++) {
            const size_t o = xo + sizeof(block_q4_0) * k + 2;
            w->q[p][k] = nibbles16_pair(xr[2 * p] + o, xr[2 * p + 1] + o);
        }
    }
    w->dx = gs_scales4(GS_PERM(x0[0], GS_IDX(gs_idx_q4_0_d), x0[1]), GS_PERM(x0[2], GS_IDX(gs_idx_q4_0_d), x0[3]));
}

static inline __attribute__((always_inline)) void
w_q4_1(const uint8_t * const * xr, size_t xo, int avail, int kmax, wstep * w) {
    __m512i x0[TR];
    for (int r = 0; r < TR; r++) x0[r] = gs_ld64(xr[r] + xo, avail);
    for (int k = 0; k < kmax; k++) {
        for (int p = 0; p < 2; p++) {
            const size_t o = xo + sizeof(block_q4_1) * k + 4;
            w->q[p][k] = nibbles16_pair(xr[2 * p] + o, xr[2 * p + 1] + o);
        }
    }
    w->dx = gs_scales4(GS_PERM(x0[0], GS_IDX(gs_idx_q4_1_d), x0[1]), GS_PERM(x0[2], GS_IDX(gs_idx_q4_1_d), x0[3]));
    w->mx = gs_scales4(GS_PERM(x0[0], GS_IDX(gs_idx_q4_1_m), x0[1]), GS_PERM(x0[2], GS_IDX(gs_idx_q4_1_m), x0[3]));
}

/* Q5_0 / Q5_1: QB = block bytes, QH = offset of qh in the block, X1 = offset
 * of the window's second load (32 bytes) */
static inline __attribute__((always_inline)) void
w_q5(const uint8_t * const * xr, size_t xo, int avail, int kmax, wstep * w, const int one) {
    const int qb = one ? (int) sizeof(block_q5_1) : (int) sizeof(block_q5_0);
    const int qh = one ? 4 : 2, x1 = one ? 64 : 56;
    __m512i raw[TR], dw[TR], mw[TR];
    for (int r = 0; r < TR; r++) {
        const __m512i a = gs_ld64(xr[r] + xo, avail), b = gs_ld32(xr[r] + xo + x1, avail - x1);
        raw[r] = GS_PERM(a, GS_IDX(one ? gs_idx_q5_1_qs : gs_idx_q5_0_qs), b);
        dw[r] = GS_PERM(a, GS_IDX(one ? gs_idx_q5_1_dr : gs_idx_q5_0_dr), b);
        if (one) mw[r] = GS_PERM(a, GS_IDX(gs_idx_q5_1_mr), b);
    }
    for (int k = 0; k < kmax; k++) {
        for (int p = 0; p < 2; p++) {
            const size_t o = xo + (size_t) (qb * k + qh);
            w->q[p][k] = gs512_add_high(gs_nibbles_pair(raw[2 * p], raw[2 * p + 1], k), xr[2 * p] + o, xr[2 * p + 1] + o);
        }
    }
    w->dx = gs_halves(gs_pick4_epi16(dw));
    if (one) w->mx = gs_halves(gs_pick4_epi16(mw));
}

static inline __attribute__((always_inline)) void
w_q8_0(const uint8_t * const * xr, size_t xo, int avail, int kmax, wstep * w) {
    const __m512i c80 = _mm512_set1_epi8((char) 0x80);
    __m512i dw[TR];
    for (int r = 0; r < TR; r++) {
        dw[r] = GS_PERM(gs_ld64(xr[r] + xo, avail), GS_IDX(gs_idx_q8_0_dr), gs_ld64(xr[r] + xo + 64, avail - 64));
    }
    for (int k = 0; k < kmax; k++) {
        for (int p = 0; p < 2; p++) {
            const size_t o = xo + sizeof(block_q8_0) * k + 2;
            const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) (xr[2 * p] + o))),
                                                 _mm256_loadu_si256((const __m256i *) (xr[2 * p + 1] + o)), 1);
            w->q[p][k] = _mm512_xor_si512(v, c80);   /* x + 128: unsigned */
        }
    }
    w->dx = gs_halves(gs_pick4_epi16(dw));
}

/* ---- activation side and the products --------------------------------- */
/* lanes 0..7 = 4k + 2p, lanes 8..15 = 4k + 2p + 1: d_x * d_y of block k of
 * pair p's two rows */
static inline __m512 pair_scale(__m512 dxy, int k, int p) {
    const __m512i idx = _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(4 * k + 2 * p),
                                                _mm512_set1_epi32(4 * k + 2 * p + 1));
    return _mm512_permutexvar_ps(idx, dxy);
}

/* Scales for nibbles16_pair weights. dxy16 = dxy / 16 is exact (d_x * d_y
 * of two nonzero halves is at least 2^-48, far from the subnormals), and
 * (s / 16) * (16 n) == s * n exactly inside a fused multiply-add, so results
 * equal the plain kernel's bit for bit. hi16_halves gathers blocks 0-1
 * (half 0) or 2-3 (half 1): lanes 0..7 from dxy, 8..15 from dxy16. */
static inline __m512 hi16_halves(__m512 dxy, __m512 dxy16, int half) {
    return half ? _mm512_shuffle_f32x4(dxy, dxy16, 0xEE) : _mm512_shuffle_f32x4(dxy, dxy16, 0x44);
}

/* pair_scale for nibbles16_pair weights, from hi16_halves(.., k / 2): lanes
 * 4..7 and 12..15 (the high nibbles, 16 x too large) take d_x * d_y / 16. */
static inline __m512 hi16_scale(__m512 half, int k, int p) {
    const int a = 4 * (k % 2) + 2 * p;
    const __m512i idx = _mm512_setr_epi32(a, a, a, a, 8 + a, 8 + a, 8 + a, 8 + a,
                                          a + 1, a + 1, a + 1, a + 1, 9 + a, 9 + a, 9 + a, 9 + a);
    return _mm512_permutexvar_ps(idx, half);
}

/* 128-bit lane k (rows 0..3 of block k) */
static inline __m128 lane128(__m512 v, int k) {
    switch (k) {
        case 0: return _mm512_extractf32x4_ps(v, 0);
        case 1: return _mm512_extractf32x4_ps(v, 1);
        case 2: return _mm512_extractf32x4_ps(v, 2);
        default: return _mm512_extractf32x4_ps(v, 3);
    }
}

/* Q8_0 activations: the weights' offset o (8, 16, 128 for Q8_0 + 128) is
 * removed per lane by starting the sums at -o * (sum of the lane's 4 y). */
/* hi16: the weights come from nibbles16_pair (Q4_0), so the offset of the
 * high-nibble lanes is 16 * off and their scales are hi16_scale's. */
static inline __attribute__((always_inline)) void
acts_q8_0(const wstep * w, const uint8_t * y, size_t by, int avail, int kmax, const int NC, int off,
          const int hi16, __m512 acc[2][TC]) {
    const __m512i z = _mm512_setzero_si512();
    const __m512i vo = hi16 ? _mm512_mask_blend_epi32(0xF0F0, _mm512_set1_epi8((char) off), _mm512_set1_epi8((char) (16 * off)))
                            : _mm512_set1_epi8((char) off);
    for (int c = 0; c < NC; c++) {
        const uint8_t * yc = y + (size_t) c * by;
        const __m512 dy = gs_halves(GS_PERM(gs_ld64(yc, avail), GS_IDX(gs_idx_q8_0_dr), gs_ld64(yc + 64, avail - 64)));
        const __m512 dxy = _mm512_mul_ps(w->dx, dy);
        const __m512 dxy16 = _mm512_mul_ps(dxy, _mm512_set1_ps(0.0625f));
        const __m512 h[2] = { hi16_halves(dxy, dxy16, 0), hi16_halves(dxy, dxy16, 1) };
        for (int k = 0; k < kmax; k++) {
            const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *) (yc + sizeof(block_q8_0) * k + 2)));
            const __m512i neg = _mm512_sub_epi32(z, _mm512_dpbusd_epi32(z, vo, v));
            for (int p = 0; p < 2; p++) {
                const __m512 dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(neg, w->q[p][k], v));
                const __m512 sc = hi16 ? hi16_scale(h[k / 2], k, p) : pair_scale(dxy, k, p);
                acc[p][c] = _mm512_fmadd_ps(sc, dot, acc[p][c]);
            }
        }
    }
}

/* Q8_1 activations (unsigned weights, no offset); ms[c] lane r collects
 * m_x * s_y per block in block order. */
static inline __attribute__((always_inline)) void
acts_q8_1(const wstep * w, const uint8_t * y, size_t by, int avail, int kmax, const int NC,
          const int hi16, __m512 acc[2][TC], __m128 ms[TC]) {
    const __m512i z = _mm512_setzero_si512();
    for (int c = 0; c < NC; c++) {
        const uint8_t * yc = y + (size_t) c * by;
        const __m512i f0 = gs_ld64(yc, avail), f1 = gs_ld64(yc + 64, avail - 64);
        const __m512 dxy = _mm512_mul_ps(w->dx, gs_halves(GS_PERM(f0, GS_IDX(gs_idx_q8_1_dr), f1)));
        const __m512 dxy16 = _mm512_mul_ps(dxy, _mm512_set1_ps(0.0625f));
        const __m512 h[2] = { hi16_halves(dxy, dxy16, 0), hi16_halves(dxy, dxy16, 1) };
        const __m512 mxs = _mm512_mul_ps(w->mx, gs_halves(GS_PERM(f0, GS_IDX(gs_idx_q8_1_sr), f1)));
        for (int k = 0; k < kmax; k++) {
            ms[c] = _mm_add_ps(ms[c], lane128(mxs, k));
            const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *) (yc + sizeof(block_q8_1) * k + 4)));
            for (int p = 0; p < 2; p++) {
                const __m512 dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(z, w->q[p][k], v));
                const __m512 sc = hi16 ? hi16_scale(h[k / 2], k, p) : pair_scale(dxy, k, p);
                acc[p][c] = _mm512_fmadd_ps(sc, dot, acc[p][c]);
            }
        }
    }
}

#define ACTS_Q8_1(hi16) acts_q8_1_##hi16
#define DEFINE_ACTS_Q8_1(hi16)                                                                 \
static inline __attribute__((always_inline)) void                                             \
acts_q8_1_##hi16(const wstep * w, const uint8_t * y, size_t by, int avail, int kmax, const int NC, \
                 __m512 acc[2][TC], __m128 ms[TC]) {                                           \
    acts_q8_1(w, y, by, avail, kmax, NC, hi16, acc, ms);                                       \
}
DEFINE_ACTS_Q8_1(0)
DEFINE_ACTS_Q8_1(1)

#define PARTIAL_STEP(WSTEP, ACTS, XB, YB, t)                                                   \
    do {                                                                                       \
        WSTEP(xr, (size_t) b * (XB), (t) * (int) (XB), (t), &w);                               \
        ACTS(&w, y + (size_t) b * (YB), by, (t) * (int) (YB), (t), NC, acc, ms);               \
    } while (0)

/* res[r][c] = dot(row xr[r], activation row c) for NC activation rows */
#define DEFINE_MICRO(name, WSTEP, ACTS, XB, YB)                                                \
static inline __attribute__((always_inline)) void                                             \
micro_##name(int nb, const uint8_t * const * xr, const uint8_t * y, size_t by, const int NC,   \
             float res[TR][TC]) {                                                              \
    __m512 acc[2][TC];                                                                         \
    __m128 ms[TC];                                                                             \
    for (int c = 0; c < NC; c++) acc[0][c] = acc[1][c] = _mm512_setzero_ps(), ms[c] = _mm_setzero_ps(); \
    wstep w;                                                                                   \
    int b = 0;                                                                                 \
    for (; b + 4 <= nb; b += 4) {                                                              \
        WSTEP(xr, (size_t) b * (XB), GS_FULL, 4, &w);                                          \
        ACTS(&w, y + (size_t) b * (YB), by, GS_FULL, 4, NC, acc, ms);                          \
    }                                                                                          \
    switch (nb - b) {   /* last 1..3 blocks, the count a constant in each case */           \
        case 3: PARTIAL_STEP(WSTEP, ACTS, XB, YB, 3); break;                                   \
        case 2: PARTIAL_STEP(WSTEP, ACTS, XB, YB, 2); break;                                   \
        case 1: PARTIAL_STEP(WSTEP, ACTS, XB, YB, 1); break;                                   \
        default: break;                                                                        \
    }                                                                                          \
    for (int c = 0; c < NC; c++) {                                                             \
        float m[4];                                                                            \
        _mm_storeu_ps(m, ms[c]);                                                               \
        for (int p = 0; p < 2; p++) {                                                          \
            const __m512d a = _mm512_castps_pd(acc[p][c]);                                     \
            res[2 * p][c] = gs256_hsum(_mm256_castpd_ps(_mm512_castpd512_pd256(a))) + m[2 * p]; \
            res[2 * p + 1][c] = gs256_hsum(_mm256_castpd_ps(_mm512_extractf64x4_pd(a, 1))) + m[2 * p + 1]; \
        }                                                                                      \
    }                                                                                          \
}

/* Q8_0-activation types ignore ms (their results add 0.0f exactly) */
#define ACTS_OFF(off, hi16) acts_q8_0_##off##_##hi16
#define DEFINE_ACTS_OFF(off, hi16)                                                             \
static inline __attribute__((always_inline)) void                                             \
acts_q8_0_##off##_##hi16(const wstep * w, const uint8_t * y, size_t by, int avail, int kmax, const int NC, \
                         __m512 acc[2][TC], __m128 ms[TC]) {                                   \
    (void) ms;                                                                                 \
    acts_q8_0(w, y, by, avail, kmax, NC, off, hi16, acc);                                      \
}
DEFINE_ACTS_OFF(8, 1)
DEFINE_ACTS_OFF(16, 0)
DEFINE_ACTS_OFF(128, 0)

static inline __attribute__((always_inline)) void
w_q5_0(const uint8_t * const * xr, size_t xo, int avail, int kmax, wstep * w) {
    w_q5(xr, xo, avail, kmax, w, 0);
}

static inline __attribute__((always_inline)) void
w_q5_1(const uint8_t * const * xr, size_t xo, int avail, int kmax, wstep * w) {
    w_q5(xr, xo, avail, kmax, w, 1);
}

/* ---- tile drivers ----------------------------------------------------------
 * nc == 1: rows i, i + Q, i + 2Q, i + 3Q (Q = ceil(nr / 4)); nc > 1: 4
 * adjacent rows x up to 4 activation rows. Missing rows repeat a valid row
 * and are not stored. */
#define DEFINE_TILE(name, XB, YB)                                                              \
void gs_avx512_tile_##name(int n, float * s, size_t bs, const void * vx, size_t bx,            \
                           const void * vy, size_t by, int nr, int nc) {                       \
    const uint8_t * x = vx, * y = vy;                                                          \
    const int nb = n / 32;                                                                     \
    float res[TR][TC];                                                                         \
    const uint8_t * xr[TR];                                                                    \
    if (nc == 1) {                                                                             \
        const int q = (nr + TR - 1) / TR;                                                      \
        for (int i = 0; i < q; i++) {                                                          \
            for (int r = 0; r < TR; r++) xr[r] = x + (size_t) (i + r * q < nr ? i + r * q : i) * bx; \
            micro_##name(nb, xr, y, by, 1, res);                                               \
            for (int r = 0; r < TR && i + r * q < nr; r++) s[i + r * q] = res[r][0];           \
        }                                                                                      \
        return;                                                                                \
    }                                                                                          \
    for (int r0 = 0; r0 < nr; r0 += TR) {                                                      \
        const int rr = nr - r0 < TR ? nr - r0 : TR;                                            \
        for (int r = 0; r < TR; r++) xr[r] = x + (size_t) (r0 + (r < rr ? r : rr - 1)) * bx;   \
        for (int c0 = 0; c0 < nc; c0 += TC) {                                                  \
            const uint8_t * yc = y + (size_t) c0 * by;                                         \
            const int cc = nc - c0 < TC ? nc - c0 : TC;                                        \
            switch (cc) {                                                                      \
                case 1: micro_##name(nb, xr, yc, by, 1, res); break;                           \
                case 2: micro_##name(nb, xr, yc, by, 2, res); break;                           \
                case 3: micro_##name(nb, xr, yc, by, 3, res); break;                           \
                default: micro_##name(nb, xr, yc, by, 4, res); break;                          \
            }                                                                                  \
            for (int c = 0; c < cc; c++) {                                                     \
                for (int r = 0; r < rr; r++) s[(size_t) (c0 + c) * bs + r0 + r] = res[r][c];   \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}

DEFINE_MICRO(q4_0, w_q4_0, ACTS_OFF(8, 1), sizeof(block_q4_0), sizeof(block_q8_0))
DEFINE_MICRO(q5_0, w_q5_0, ACTS_OFF(16, 0), sizeof(block_q5_0), sizeof(block_q8_0))
DEFINE_MICRO(q8_0, w_q8_0, ACTS_OFF(128, 0), sizeof(block_q8_0), sizeof(block_q8_0))
DEFINE_MICRO(q4_1, w_q4_1, ACTS_Q8_1(1), sizeof(block_q4_1), sizeof(block_q8_1))
DEFINE_MICRO(q5_1, w_q5_1, ACTS_Q8_1(0), sizeof(block_q5_1), sizeof(block_q8_1))

DEFINE_TILE(q4_0, sizeof(block_q4_0), sizeof(block_q8_0))
DEFINE_TILE(q5_0, sizeof(block_q5_0), sizeof(block_q8_0))
DEFINE_TILE(q8_0, sizeof(block_q8_0), sizeof(block_q8_0))
DEFINE_TILE(q4_1, sizeof(block_q4_1), sizeof(block_q8_1))
DEFINE_TILE(q5_1, sizeof(block_q5_1), sizeof(block_q8_1))

/* ---- scattered rows (gs_sparse_dots_avx512, cpu/sparse.h) --------------------
 * The micro-kernel over nr <= 4 rows given by pointers and one activation
 * row: the rows an index picks (ops_sparse*.c). Missing rows repeat row 0
 * and are not stored. Bit-identical to the single-row kernels, as above.
 * (Measured on SmolLM2's 576-wide Q4_1 rows, in cache, 1 thread: half the
 * rows of a 1536-row matrix in 21.5 us, against 36 us with 256-bit
 * one-block-at-a-time kernels and 31 us for the whole dense product.) */
#define DEFINE_ROWS(name)                                                                      \
static void rows_##name(int n, int nr, float * s, const uint8_t * const * x, const void * y) { \
    const uint8_t * xr[TR];                                                                    \
    float res[TR][TC];                                                                         \
    for (int r = 0; r < TR; r++) xr[r] = x[r < nr ? r : 0];                                    \
    micro_##name(n / 32, xr, (const uint8_t *) y, 0, 1, res);                                  \
    for (int r = 0; r < nr; r++) s[r] = res[r][0];                                             \
}

DEFINE_ROWS(q4_0)
DEFINE_ROWS(q5_0)
DEFINE_ROWS(q8_0)
DEFINE_ROWS(q4_1)
DEFINE_ROWS(q5_1)

const gs_sparse_dots_fn gs_sparse_dots_avx512[GS_TYPE_COUNT] = {
    [GS_TYPE_Q4_0] = rows_q4_0,
    [GS_TYPE_Q4_1] = rows_q4_1,
    [GS_TYPE_Q5_0] = rows_q5_0,
    [GS_TYPE_Q5_1] = rows_q5_1,
    [GS_TYPE_Q8_0] = rows_q8_0,
};
