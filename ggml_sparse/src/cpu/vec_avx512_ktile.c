/*
 * vec_avx512_ktile.c - AVX-512 VNNI tile kernels (gs_vec_dot_tile_fn) of
 * the K types Q4_K, Q5_K, Q6_K (Q8_K activations).
 *
 * A single activation row (decode) goes row by row through the single-row
 * kernels (one sequential stream). Several (prompt processing) go through a
 * micro-kernel of 4 weight rows x 4 activation rows per super-block:
 *  - for each 64 weights k of the super-block, each row's weights are
 *    unpacked once and each activation row's bytes loaded once; 16 int32
 *    accumulators (one per row, column pair) collect vpmaddubsw/vpdpwssd
 *    products scaled by the 16-bit sub-block scales;
 *  - reduce16 adds each accumulator's lanes into lane 4r + c of one
 *    register, scaled once per super-block by d_r * d_y,c;
 *  - the per-row x per-column offset terms (Q4_K/Q5_K mins, Q6_K's -32)
 *    are a small integer matrix product: lane 4r + c = sum_q R_r[q] . C_c[q]
 *    over 8 dwords of int16 pairs, with R from the row's mins or scales and
 *    C the column's bsums (rowcol_dot).
 * Rows beyond nr and columns beyond nc repeat the last one and are not
 * stored.
 */
#include "vec_avx512.h"
#include "vec_k_scales.h"

#define TR 4
#define TC 4

/* lane 4g + i = sum of all lanes of a[4g + i] */
static inline __m512i reduce16(const __m512i a[16]) {
    __m512i v[4];
    for (int g = 0; g < 4; g++) {
        const __m512i * p = a + 4 * g;
        const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[0], p[1]), _mm512_unpackhi_epi32(p[0], p[1]));
        const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2], p[3]), _mm512_unpackhi_epi32(p[2], p[3]));
        /* lane 4l + i: 128-bit lane l of p[i], summed */
        v[g] = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
    }
    const __m512i w01 = _mm512_add_epi32(_mm512_shuffle_i32x4(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                         _mm512_shuffle_i32x4(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i w23 = _mm512_add_epi32(_mm512_shuffle_i32x4(v[2], v[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                         _mm512_shuffle_i32x4(v[2], v[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(w01, w23, _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(w01, w23, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* lane 4r + c = sum over q < 8 of the int16 pair products of dword q of
 * rows[r] and dword q of cols[c] (8 dwords each). */
static inline __m512i rowcol_dot(const __m256i rows[TR], const __m256i cols[TC]) {
    const __m512i r01 = _mm512_inserti64x4(_mm512_castsi256_si512(rows[0]), rows[1], 1);
    const __m512i r23 = _mm512_inserti64x4(_mm512_castsi256_si512(rows[2]), rows[3], 1);
    const __m512i c01 = _mm512_inserti64x4(_mm512_castsi256_si512(cols[0]), cols[1], 1);
    const __m512i c23 = _mm512_inserti64x4(_mm512_castsi256_si512(cols[2]), cols[3], 1);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    /* dword 8r + q (lane >> 2 = r) and 8c + q (lane & 3 = c) of the pairs */
    const __m512i ir = _mm512_slli_epi32(_mm512_srli_epi32(lane, 2), 3);
    const __m512i ic = _mm512_slli_epi32(_mm512_and_si512(lane, _mm512_set1_epi32(3)), 3);
    __m512i acc = _mm512_setzero_si512();
    for (int q = 0; q < 8; q++) {
        const __m512i vq = _mm512_set1_epi32(q);
        acc = _mm512_dpwssd_epi32(acc, _mm512_permutex2var_epi32(r01, _mm512_add_epi32(ir, vq), r23),
                                  _mm512_permutex2var_epi32(c01, _mm512_add_epi32(ic, vq), c23));
    }
    return acc;
}

/* lane 4r + c = rows[r] * cols[c] */
static inline __m512 outer4(__m128 rows, __m128 cols) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 r = _mm512_permutexvar_ps(_mm512_srli_epi32(lane, 2), _mm512_castps128_ps512(rows));
    const __m512 c = _mm512_permutexvar_ps(_mm512_and_si512(lane, _mm512_set1_epi32(3)), _mm512_castps128_ps512(cols));
    return _mm512_mul_ps(r, c);
}

/* int16 lanes 0..15 = scale 2k, lanes 16..31 = scale 2k + 1 (Q4_K/Q5_K) */
static inline __m512i scale_pair(uint64_t sc, int k) {
    const __m512i scb = _mm512_broadcast_i32x4(_mm_cvtsi64_si128((long long) sc));
    const __m512i ctrl = _mm512_inserti64x4(_mm512_set1_epi16((short) (0x8000 + 2 * k)),
                                            _mm256_set1_epi16((short) (0x8001 + 2 * k)), 1);
    return _mm512_shuffle_epi8(scb, ctrl);
}

/* Weights 64k..64k+63 of a Q4_K/Q5_K super-block as unsigned bytes; qhz =
 * [qh, qh >> 1] for Q5_K (high bit 2k / 2k + 1 to bit 4). */
static inline __m512i k4_weights(const uint8_t * qs, __m512i qhz, int k, int high) {
    const __m256i q = _mm256_loadu_si256((const __m256i *) (qs + 32 * k));
    __m512i w = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1),
                                 _mm512_set1_epi8(0x0F));
    if (high) {
        const __m512i h = k == 0 ? _mm512_slli_epi16(qhz, 4) : k == 1 ? _mm512_slli_epi16(qhz, 2)
                        : k == 2 ? qhz : _mm512_srli_epi16(qhz, 2);
        w = _mm512_ternarylogic_epi32(w, h, _mm512_set1_epi8(0x10), 0xF8);   /* w | (h & 0x10) */
    }
    return w;
}

/* Weights 64k..64k+63 of a Q6_K super-block as unsigned bytes (q + 32). */
static inline __m512i k6_weights(const block_q6_K * x, int k) {
    const int h = k >> 1;
    const __m512i ql = _mm512_loadu_si512(x->ql + 64 * h);
    const __m256i qh = _mm256_loadu_si256((const __m256i *) (x->qh + 32 * h));
    const __m512i qhz = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
    const __m512i m0F = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    if (k & 1) {
        return _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m0F), _mm512_and_si512(qhz, m30));
    }
    return _mm512_or_si512(_mm512_and_si512(ql, m0F), _mm512_and_si512(_mm512_slli_epi16(qhz, 4), m30));
}

/* 16-bit scales of Q6_K weights 64k..64k+63: lanes 8i..8i+7 = scale 4k + i */
static inline __m512i k6_scales(__m512i sc16, int k) {
    const __m512i lane = _mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16,
                                          15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i idx = _mm512_add_epi16(_mm512_srli_epi16(lane, 3), _mm512_set1_epi16((short) (4 * k)));
    return _mm512_permutexvar_epi16(idx, sc16);
}

/* Store lane 4r + c of v to s[c * bs + r] for r < nr, c < nc. */
static inline void store_tile(__m512 v, float * s, size_t bs, int nr, int nc) {
    float t[16];
    _mm512_storeu_ps(t, v);
    for (int c = 0; c < nc; c++) {
        for (int r = 0; r < nr; r++) s[(size_t) c * bs + r] = t[4 * r + c];
    }
}

/* kind: 0 = Q4_K, 1 = Q5_K, 2 = Q6_K */
static inline __attribute__((always_inline)) void
micro_k(int nb, float * s, size_t bs, const uint8_t * x, size_t bx, int nr,
        const uint8_t * y, size_t by, int nc, const int kind) {
    const size_t xbs = kind == 0 ? sizeof(block_q4_K) : kind == 1 ? sizeof(block_q5_K) : sizeof(block_q6_K);
    const uint8_t * xr[TR];
    const block_q8_K * yc[TC];
    for (int r = 0; r < TR; r++) xr[r] = x + (size_t) (r < nr ? r : nr - 1) * bx;
    for (int c = 0; c < TC; c++) yc[c] = (const block_q8_K *) (y + (size_t) (c < nc ? c : nc - 1) * by);
    __m512 facc = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        uint64_t sc[TR];
        __m256i rv[TR], cv[TC];
        __m512i qhz[TR], sc16[TR];
        float dr[TR], mr[TR], dy[TC];
        for (int r = 0; r < TR; r++) {
            const uint8_t * xb = xr[r] + b * xbs;
            if (kind == 2) {
                const block_q6_K * q6 = (const block_q6_K *) xb;
                const __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) q6->scales));
                sc16[r] = _mm512_castsi256_si512(s16);
                rv[r] = s16;   /* scale pairs for the -32 * sum(scale * bsum) term */
                dr[r] = _cvtsh_ss(q6->d);
                mr[r] = 0.0f;
            } else {
                const block_q4_K * q4 = (const block_q4_K *) xb;   /* same head as block_q5_K */
                uint64_t m;
                gs_unpack_scales_k4(q4->scales, &sc[r], &m);
                const __m128i m8 = _mm_cvtsi64_si128((long long) m);
                rv[r] = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));   /* (m_q, m_q) pairs */
                dr[r] = _cvtsh_ss(q4->d);
                mr[r] = _cvtsh_ss(q4->dmin);
                if (kind == 1) {
                    const __m256i qh = _mm256_loadu_si256((const __m256i *) ((const block_q5_K *) xb)->qh);
                    qhz[r] = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 1), 1);
                }
            }
        }
        for (int c = 0; c < TC; c++) {
            cv[c] = _mm256_loadu_si256((const __m256i *) yc[c][b].bsums);
            dy[c] = yc[c][b].d;
        }
        __m512i acc[TR * TC];
        for (int i = 0; i < TR * TC; i++) acc[i] = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            __m512i w[TR], scv[TR];
            for (int r = 0; r < TR; r++) {
                const uint8_t * xb = xr[r] + b * xbs;
                if (kind == 2) {
                    w[r] = k6_weights((const block_q6_K *) xb, k);
                    scv[r] = k6_scales(sc16[r], k);
                } else {
                    const uint8_t * qs = kind == 0 ? ((const block_q4_K *) xb)->qs : ((const block_q5_K *) xb)->qs;
                    w[r] = k4_weights(qs, qhz[r], k, kind == 1);
                    scv[r] = scale_pair(sc[r], k);
                }
            }
            for (int c = 0; c < TC; c++) {
                const __m512i v = _mm512_loadu_si512(yc[c][b].qs + 64 * k);
                for (int r = 0; r < TR; r++) {
                    acc[4 * r + c] = _mm512_dpwssd_epi32(acc[4 * r + c], _mm512_maddubs_epi16(w[r], v), scv[r]);
                }
            }
        }
        __m512i dot = reduce16(acc);
        const __m512i off = rowcol_dot(rv, cv);
        const __m128 vdy = _mm_loadu_ps(dy), vdr = _mm_loadu_ps(dr);
        if (kind == 2) {
            /* q - 32: subtract 32 * sum_j scale_j * bsums_j */
            dot = _mm512_sub_epi32(dot, _mm512_slli_epi32(off, 5));
            facc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), outer4(vdr, vdy), facc);
        } else {
            facc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), outer4(vdr, vdy), facc);
            facc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(off), outer4(_mm_loadu_ps(mr), vdy), facc);
        }
    }
    store_tile(facc, s, bs, nr, nc);
}

#define DEFINE_KTILE(name, KIND, DOT)                                                          \
void gs_avx512_tile_##name(int n, float * s, size_t bs, const void * vx, size_t bx,            \
                           const void * vy, size_t by, int nr, int nc) {                       \
    const uint8_t * x = vx, * y = vy;                                                          \
    if (nc == 1) {                                                                             \
        for (int r = 0; r < nr; r++) DOT(n, &s[r], x + (size_t) r * bx, y);                    \
        return;                                                                                \
    }                                                                                          \
    for (int r0 = 0; r0 < nr; r0 += TR) {                                                      \
        for (int c0 = 0; c0 < nc; c0 += TC) {                                                  \
            micro_k(n / QK_K, s + (size_t) c0 * bs + r0, bs, x + (size_t) r0 * bx, bx,         \
                    nr - r0 < TR ? nr - r0 : TR, y + (size_t) c0 * by, by,                     \
                    nc - c0 < TC ? nc - c0 : TC, KIND);                                        \
        }                                                                                      \
    }                                                                                          \
}

DEFINE_KTILE(q4_K, 0, gs_avx512_dot_q4_K)
DEFINE_KTILE(q5_K, 1, gs_avx512_dot_q5_K)
DEFINE_KTILE(q6_K, 2, gs_avx512_dot_q6_K)
