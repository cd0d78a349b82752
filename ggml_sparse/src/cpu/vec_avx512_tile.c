/*
 * vec_avx512_tile.c - AVX-512 VNNI tile kernels (gs_vec_dot_tile_fn) of the
 * 32-weight block types Q4_0, Q8_0 (Q8_0 activations) and Q4_1 (Q8_1).
 * A single activation row (decode) goes to the matrix x vector kernels of
 * vec_avx512_gemv.c; several (prompt processing) to the micro-kernels here.
 *
 * A micro-kernel computes 4 weight rows x NC (1..4) activation rows over
 * the whole row length, one step (4 blocks, see vec_avx512_blocks.h) at a
 * time. The weight side of a step (unpacking, scales) is done once and
 * reused for every activation row, the activation side once per activation
 * row and reused for the 4 weight rows. Per activation row the four rows'
 * partial sums are reduced by gs_reduce4 into lane 4b + r (block b, row r)
 * and scaled by d_x * d_y once for 16 (row, block) pairs. A last partial
 * step loads with byte masks (missing blocks read as zero, scale 0). Weight
 * rows beyond nr repeat the last row and are not stored.
 */
#include "vec_avx512_blocks.h"

#define TR 4     /* weight rows per micro-kernel        */
#define TC 4     /* activation rows per micro-kernel    */

/* acc lane 4b + r summed over b -> s[r] for r < nr */
static inline void store_rows(__m512 acc, float * s, int nr) {
    __m512 t = _mm512_add_ps(acc, _mm512_shuffle_f32x4(acc, acc, _MM_SHUFFLE(1, 0, 3, 2)));
    t = _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, _MM_SHUFFLE(2, 3, 0, 1)));
    const __m128 r = _mm512_castps512_ps128(t);
    if (nr >= 4) _mm_storeu_ps(s, r);
    else _mm_mask_storeu_ps(s, (__mmask8) ((1u << nr) - 1), r);
}

/* ---- per-type steps: 4 blocks of TR rows (xr[r] + xo) x NC activation rows
 * (y + c * by), accumulating into acc[c] --------------------------------- */
static inline __attribute__((always_inline)) void
step_q4_0(const uint8_t * const * xr, size_t xo, int xa, const uint8_t * y, size_t by, int ya,
          const int NC, __m512 * acc) {
    const __m512i m0F = _mm512_set1_epi8(0x0F), c8 = _mm512_set1_epi8(8), z = _mm512_setzero_si512();
    __m512i lo[TR], hi[TR], x0[TR];
    for (int r = 0; r < TR; r++) {
        x0[r] = gs_ld64(xr[r] + xo, xa);
        const __m512i q = GS_PERM(x0[r], GS_IDX(gs_idx_q4_0_qs), gs_ld16(xr[r] + xo + 56, xa - 56));
        lo[r] = _mm512_and_si512(q, m0F);
        hi[r] = _mm512_and_si512(_mm512_srli_epi16(q, 4), m0F);
    }
    const __m512 dx = gs_scales4(GS_PERM(x0[0], GS_IDX(gs_idx_q4_0_d), x0[1]), GS_PERM(x0[2], GS_IDX(gs_idx_q4_0_d), x0[3]));
    for (int c = 0; c < NC; c++) {
        __m512i vlo, vhi, dw, p[TR];
        gs_q8_0_step(y + c * by, ya, &vlo, &vhi, &dw);
        /* (q - 8) . y = q . y - 8 sum(y): start the sums at -8 sum(y) */
        const __m512i neg = _mm512_sub_epi32(z, _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, c8, vlo), c8, vhi));
        for (int r = 0; r < TR; r++) p[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(neg, lo[r], vlo), hi[r], vhi);
        acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(gs_reduce4(p)), _mm512_mul_ps(dx, gs_halves(dw)), acc[c]);
    }
}

static inline __attribute__((always_inline)) void
step_q8_0(const uint8_t * const * xr, size_t xo, int xa, const uint8_t * y, size_t by, int ya,
          const int NC, __m512 * acc) {
    const __m512i c80 = _mm512_set1_epi8((char) 0x80), z = _mm512_setzero_si512();
    __m512i lo[TR], hi[TR], dw[TR];
    for (int r = 0; r < TR; r++) {
        gs_q8_0_step(xr[r] + xo, xa, &lo[r], &hi[r], &dw[r]);
        /* x + 128 is unsigned; subtract 128 sum(y) below */
        lo[r] = _mm512_xor_si512(lo[r], c80);
        hi[r] = _mm512_xor_si512(hi[r], c80);
    }
    const __m512 dx = gs_halves(gs_pick4_epi16(dw));
    for (int c = 0; c < NC; c++) {
        __m512i vlo, vhi, dy, p[TR];
        gs_q8_0_step(y + c * by, ya, &vlo, &vhi, &dy);
        const __m512i neg = _mm512_sub_epi32(z, _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, c80, vlo), c80, vhi));
        for (int r = 0; r < TR; r++) p[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(neg, lo[r], vlo), hi[r], vhi);
        acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(gs_reduce4(p)), _mm512_mul_ps(dx, gs_halves(dy)), acc[c]);
    }
}

static inline __attribute__((always_inline)) void
step_q4_1(const uint8_t * const * xr, size_t xo, int xa, const uint8_t * y, size_t by, int ya,
          const int NC, __m512 * acc) {
    const __m512i m0F = _mm512_set1_epi8(0x0F), z = _mm512_setzero_si512();
    __m512i lo[TR], hi[TR], x0[TR];
    for (int r = 0; r < TR; r++) {
        x0[r] = gs_ld64(xr[r] + xo, xa);
        const __m512i q = GS_PERM(x0[r], GS_IDX(gs_idx_q4_1_qs), gs_ld16(xr[r] + xo + 64, xa - 64));
        lo[r] = _mm512_and_si512(q, m0F);
        hi[r] = _mm512_and_si512(_mm512_srli_epi16(q, 4), m0F);
    }
    const __m512 dx = gs_scales4(GS_PERM(x0[0], GS_IDX(gs_idx_q4_1_d), x0[1]), GS_PERM(x0[2], GS_IDX(gs_idx_q4_1_d), x0[3]));
    const __m512 mx = gs_scales4(GS_PERM(x0[0], GS_IDX(gs_idx_q4_1_m), x0[1]), GS_PERM(x0[2], GS_IDX(gs_idx_q4_1_m), x0[3]));
    for (int c = 0; c < NC; c++) {
        const uint8_t * yc = y + c * by;
        __m512i vlo, vhi;
        __m512 dy, sy;
        gs_q8_1_step(yc, ya, &vlo, &vhi, &dy, &sy);
        __m512i p[TR];
        for (int r = 0; r < TR; r++) p[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, lo[r], vlo), hi[r], vhi);
        /* (d q + m) . y = d d_y (q . yq) + m s_y */
        acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(gs_reduce4(p)), _mm512_mul_ps(dx, dy), acc[c]);
        acc[c] = _mm512_fmadd_ps(mx, sy, acc[c]);
    }
}

/* ---- micro-kernels and tile drivers ------------------------------------ */
/* TR rows (nr valid) x NC activation rows, nb blocks; XB / YB: block bytes. */
#define DEFINE_TILE(name, STEP, XB, YB)                                                        \
static inline __attribute__((always_inline)) void                                             \
micro_##name(int nb, float * s, size_t bs, const uint8_t * x, size_t bx, int nr,               \
             const uint8_t * y, size_t by, const int NC) {                                     \
    const uint8_t * xr[TR];                                                                    \
    for (int r = 0; r < TR; r++) xr[r] = x + (size_t) (r < nr ? r : nr - 1) * bx;              \
    __m512 acc[TC];                                                                            \
    for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();                                 \
    int b = 0;                                                                                 \
    for (; b + 4 <= nb; b += 4) STEP(xr, (size_t) b * (XB), GS_FULL, y + (size_t) b * (YB), by, GS_FULL, NC, acc); \
    if (b < nb) STEP(xr, (size_t) b * (XB), (nb - b) * (XB), y + (size_t) b * (YB), by, (nb - b) * (YB), NC, acc); \
    for (int c = 0; c < NC; c++) store_rows(acc[c], s + c * bs, nr);                           \
}                                                                                              \
void gs_avx512_tile_##name(int n, float * s, size_t bs, const void * vx, size_t bx,            \
                           const void * vy, size_t by, int nr, int nc) {                       \
    const uint8_t * x = vx, * y = vy;                                                          \
    if (nc == 1) {                                                                             \
        gs_avx512_gemv_##name(n, s, vx, bx, vy, nr);                                           \
        return;                                                                                \
    }                                                                                          \
    for (int r0 = 0; r0 < nr; r0 += TR) {                                                      \
        const int rr = nr - r0 < TR ? nr - r0 : TR;                                            \
        for (int c0 = 0; c0 < nc; c0 += TC) {                                                  \
            float * sc = s + (size_t) c0 * bs + r0;                                            \
            const uint8_t * xc = x + (size_t) r0 * bx, * yc = y + (size_t) c0 * by;            \
            switch (nc - c0) {                                                                 \
                case 1: micro_##name(n / 32, sc, bs, xc, bx, rr, yc, by, 1); break;            \
                case 2: micro_##name(n / 32, sc, bs, xc, bx, rr, yc, by, 2); break;            \
                case 3: micro_##name(n / 32, sc, bs, xc, bx, rr, yc, by, 3); break;            \
                default: micro_##name(n / 32, sc, bs, xc, bx, rr, yc, by, 4); break;           \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}

DEFINE_TILE(q4_0, step_q4_0, sizeof(block_q4_0), sizeof(block_q8_0))
DEFINE_TILE(q8_0, step_q8_0, sizeof(block_q8_0), sizeof(block_q8_0))
DEFINE_TILE(q4_1, step_q4_1, sizeof(block_q4_1), sizeof(block_q8_1))
