/*
 * vec_avx512_ktile.c - AVX-512 VNNI tile kernels (gs_vec_dot_tile_fn) of
 * the K types Q4_K, Q5_K, Q6_K (Q8_K activations), bit-identical to the
 * single-row kernels and vec_generic.c.
 *
 * A single activation row (decode) goes through the 4-row kernels of
 * vec_avx512_k4rows.c (Q4_K, also in the repacked order) and
 * vec_avx512_k6rows.c (Q6_K), or row by row through the single-row kernel
 * (Q5_K). Several (prompt processing) go through a
 * micro-kernel of 4 weight rows x 4 activation rows per super-block:
 *  - for each 64 weights k of the super-block, each row's weights are
 *    unpacked once and each activation row's bytes loaded once; 16 int32
 *    accumulators (one per row, column pair) collect vpmaddubsw/vpdpwssd
 *    products scaled by the 16-bit sub-block scales;
 *  - per super-block, each accumulator folds into vec_generic.c's 8
 *    integer lanes, two (row, column) pairs per register, which go to 8
 *    float lanes per pair with one fused multiply-add by d_r * d_y,c;
 *  - the weight offsets: Q6_K's -32 per lane (madd of bsums and scales);
 *    the Q4_K mins in 4 float lanes per pair (one register per column),
 *    the Q5_K mins as one float per pair, lane 4r + c of one register,
 *    from a small integer matrix product (rowcol_dot).
 * The gemm kernels (llama.cpp's batched order, gemm_tile) share the integer
 * part; per super-block they reduce each accumulator to one integer
 * (reduce16: lane 4r + c) and take the offsets from rowcol_dot.
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

/* lane 4r + c = rows[r], resp. cols[c], resp. rows[r] * cols[c] */
static inline __m512 by_row(__m128 rows) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return _mm512_permutexvar_ps(_mm512_srli_epi32(lane, 2), _mm512_castps128_ps512(rows));
}

static inline __m512 by_col(__m128 cols) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return _mm512_permutexvar_ps(_mm512_and_si512(lane, _mm512_set1_epi32(3)), _mm512_castps128_ps512(cols));
}

static inline __m512 outer4(__m128 rows, __m128 cols) {
    return _mm512_mul_ps(by_row(rows), by_col(cols));
}

/* Lanes 0..7 = lane 2p of v, lanes 8..15 = lane 2p + 1 (pair p's factors). */
static inline __m512 pair_bcast(__m512 v, int p) {
    const __m512i idx = _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(2 * p), _mm512_set1_epi32(2 * p + 1));
    return _mm512_permutexvar_ps(idx, v);
}

/* The 8 integer lanes of vec_generic.c for accumulators a (lanes 0..7) and
 * b (lanes 8..15): dword l + dword l + 8 of each. */
static inline __m512i fold_pair(__m512i a, __m512i b) {
    return _mm512_add_epi32(_mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                            _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
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

/* kind: 0 = Q4_K, 1 = Q5_K, 2 = Q6_K; batched: the float order of
 * vec_generic.c's gemm_tile (per output: s1, s2 integers, then
 * acc = fma(s1 d_x - dmin_x s2, d_y, acc); in lane 4r + c of gacc) instead
 * of vec_dot's (pairs p = (row p / 2, columns 2 (p % 2) and 2 (p % 2) + 1)
 * in facc[p]). Accumulator index 4r + c. */
static inline __attribute__((always_inline)) void
micro_k(int nb, float * s, size_t bs, const uint8_t * x, size_t bx, int nr,
        const uint8_t * y, size_t by, int nc, const int kind, const int batched) {
    const size_t xbs = kind == 0 ? sizeof(block_q4_K) : kind == 1 ? sizeof(block_q5_K) : sizeof(block_q6_K);
    const uint8_t * xr[TR];
    const block_q8_K * yc[TC];
    for (int r = 0; r < TR; r++) xr[r] = x + (size_t) (r < nr ? r : nr - 1) * bx;
    for (int c = 0; c < TC; c++) yc[c] = (const block_q8_K *) (y + (size_t) (c < nc ? c : nc - 1) * by);
    __m512 facc[8], macc[TC];   /* macc: Q4_K mins, lane 4r + i of column c */
    __m512 summs = _mm512_setzero_ps();   /* Q5_K mins, lane 4r + c */
    __m512 gacc = _mm512_setzero_ps();    /* batched: lane 4r + c */
    for (int p = 0; p < 8; p++) facc[p] = _mm512_setzero_ps();
    for (int c = 0; c < TC; c++) macc[c] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        uint64_t sc[TR];
        __m256i rv[TR], cv[TC];
        __m128i m16[TR];
        __m512i qhz[TR], sc16[TR];
        float dr[TR], mr[TR], dy[TC];
        for (int r = 0; r < TR; r++) {
            const uint8_t * xb = xr[r] + b * xbs;
            if (kind == 2) {
                const block_q6_K * q6 = (const block_q6_K *) xb;
                rv[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) q6->scales));
                sc16[r] = _mm512_castsi256_si512(rv[r]);
                dr[r] = _cvtsh_ss(q6->d);
            } else {
                const block_q4_K * q4 = (const block_q4_K *) xb;   /* same head as block_q5_K */
                uint64_t m;
                gs_unpack_scales_k4(q4->scales, &sc[r], &m);
                const __m128i m8 = _mm_cvtsi64_si128((long long) m);
                rv[r] = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));   /* (m_q, m_q) pairs */
                m16[r] = _mm_cvtepu8_epi16(m8);
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
        const __m128 vdy = _mm_loadu_ps(dy);
        if (batched) {
            __m512i s1 = reduce16(acc);
            const __m512i s2 = rowcol_dot(rv, cv);
            if (kind == 2) s1 = _mm512_sub_epi32(s1, _mm512_slli_epi32(s2, 5));   /* q - 32 */
            __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(s1), by_row(_mm_loadu_ps(dr)));
            if (kind != 2) t = _mm512_fnmadd_ps(by_row(_mm_loadu_ps(mr)), _mm512_cvtepi32_ps(s2), t);
            gacc = _mm512_fmadd_ps(t, by_col(vdy), gacc);
            continue;
        }
        const __m512 d = outer4(_mm_loadu_ps(dr), vdy);
        for (int p = 0; p < 8; p++) {
            const int r = p / 2, c = 2 * (p % 2);
            __m512i lanes = fold_pair(acc[4 * r + c], acc[4 * r + c + 1]);
            if (kind == 2) {
                /* q - 32: lane l subtracts 32 (sc_2l bsums_2l + sc_2l+1 bsums_2l+1) */
                const __m512i bsp = _mm512_inserti64x4(_mm512_castsi256_si512(cv[c]), cv[c + 1], 1);
                const __m512i scp = _mm512_inserti64x4(sc16[r], _mm512_castsi512_si256(sc16[r]), 1);
                lanes = _mm512_sub_epi32(lanes, _mm512_slli_epi32(_mm512_madd_epi16(bsp, scp), 5));
            }
            facc[p] = _mm512_fmadd_ps(pair_bcast(d, p), _mm512_cvtepi32_ps(lanes), facc[p]);
        }
        if (kind != 2) {
            const __m512 dmin = outer4(_mm_loadu_ps(mr), vdy);   /* subtracted */
            if (kind == 1) {
                summs = _mm512_fnmadd_ps(dmin, _mm512_cvtepi32_ps(rowcol_dot(rv, cv)), summs);
            } else {
                const __m512i mrows = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(m16[0]), m16[1], 1)),
                    _mm256_inserti128_si256(_mm256_castsi128_si256(m16[2]), m16[3], 1), 1);
                const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
                for (int c = 0; c < TC; c++) {
                    /* lane 4r + i: m_r,2i (bs_4i + bs_4i+1) + m_r,2i+1 (bs_4i+2 + bs_4i+3) */
                    const __m128i q8s = _mm_hadd_epi16(_mm256_castsi256_si128(cv[c]), _mm256_extracti128_si256(cv[c], 1));
                    const __m512i prod = _mm512_madd_epi16(mrows, _mm512_broadcast_i32x4(q8s));
                    const __m512i idx = _mm512_or_si512(_mm512_andnot_si512(_mm512_set1_epi32(3), lane), _mm512_set1_epi32(c));
                    macc[c] = _mm512_fnmadd_ps(_mm512_permutexvar_ps(idx, dmin), _mm512_cvtepi32_ps(prod), macc[c]);
                }
            }
        }
    }
    if (batched) {
        float g[16];
        _mm512_storeu_ps(g, gacc);
        for (int c = 0; c < nc; c++) {
            for (int r = 0; r < nr; r++) s[(size_t) c * bs + r] = g[4 * r + c];
        }
        return;
    }
    float fl[8][16], ml[TC][16], sm[16];
    for (int p = 0; p < 8; p++) _mm512_storeu_ps(fl[p], facc[p]);
    for (int c = 0; c < TC; c++) _mm512_storeu_ps(ml[c], macc[c]);
    _mm512_storeu_ps(sm, summs);
    for (int c = 0; c < nc; c++) {
        for (int r = 0; r < nr; r++) {
            const float * l8 = &fl[2 * r + c / 2][8 * (c % 2)];
            const float * m4 = &ml[c][4 * r];
            const float mins = kind == 0 ? (m4[0] + m4[2]) + (m4[1] + m4[3]) : kind == 1 ? sm[4 * r + c] : 0.0f;
            const float sum = gs256_hsum(_mm256_loadu_ps(l8));
            s[(size_t) c * bs + r] = kind == 2 ? sum : sum + mins;
        }
    }
}

/* micro-kernels over the tile (TILE: vec_dot order, GEMM: batched order) */
#define KTILE_LOOP(KIND, BATCHED)                                                              \
    for (int r0 = 0; r0 < nr; r0 += TR) {                                                      \
        for (int c0 = 0; c0 < nc; c0 += TC) {                                                  \
            micro_k(n / QK_K, s + (size_t) c0 * bs + r0, bs, x + (size_t) r0 * bx, bx,         \
                    nr - r0 < TR ? nr - r0 : TR, y + (size_t) c0 * by, by,                     \
                    nc - c0 < TC ? nc - c0 : TC, KIND, BATCHED);                               \
        }                                                                                      \
    }

#define DEFINE_KTILE(name, KIND, DOT)                                                          \
void gs_avx512_tile_##name(int n, float * s, size_t bs, const void * vx, size_t bx,            \
                           const void * vy, size_t by, int nr, int nc) {                       \
    const uint8_t * x = vx, * y = vy;                                                          \
    if (nc == 1) {                                                                             \
        if (KIND == 0 || KIND == 2) {                                                          \
            (KIND == 0 ? gs_avx512_dot_q4_K_rows : gs_avx512_dot_q6_K_rows)(n, s, x, bx, y, nr);  \
            return;                                                                            \
        }                                                                                      \
        for (int r = 0; r < nr; r++) DOT(n, &s[r], x + (size_t) r * bx, y);                    \
        return;                                                                                \
    }                                                                                          \
    KTILE_LOOP(KIND, 0)                                                                        \
}                                                                                              \
void gs_avx512_gemm_##name(int n, float * s, size_t bs, const void * vx, size_t bx,            \
                           const void * vy, size_t by, int nr, int nc) {                       \
    const uint8_t * x = vx, * y = vy;                                                          \
    KTILE_LOOP(KIND, 1)                                                                        \
}

DEFINE_KTILE(q4_K, 0, gs_avx512_dot_q4_K)
DEFINE_KTILE(q5_K, 1, gs_avx512_dot_q5_K)
DEFINE_KTILE(q6_K, 2, gs_avx512_dot_q6_K)

/* ---- Q4_K in llama.cpp's repacked order (repack.h) --------------------------
 * The micro-kernel above's integer part, 4 weight rows x 4 activation rows,
 * then per step (a pair of sub-blocks with `pairs`, else a super-block) the
 * exact s1 (reduce16 of the step's accumulators) and s2 (the step's mins
 * times bsums, rowcol_dot over its sub-blocks) per output, lane 4r + c, and
 * acc = fma(s1, d_r d_y,c, acc), accm = fma(s2, dmin_r d_y,c, accm). */
static inline __m512i rowcol_dot_sub(const __m256i rows[TR], const __m256i cols[TC], int q0, int q1) {
    const __m512i r01 = _mm512_inserti64x4(_mm512_castsi256_si512(rows[0]), rows[1], 1);
    const __m512i r23 = _mm512_inserti64x4(_mm512_castsi256_si512(rows[2]), rows[3], 1);
    const __m512i c01 = _mm512_inserti64x4(_mm512_castsi256_si512(cols[0]), cols[1], 1);
    const __m512i c23 = _mm512_inserti64x4(_mm512_castsi256_si512(cols[2]), cols[3], 1);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i ir = _mm512_slli_epi32(_mm512_srli_epi32(lane, 2), 3);
    const __m512i ic = _mm512_slli_epi32(_mm512_and_si512(lane, _mm512_set1_epi32(3)), 3);
    __m512i acc = _mm512_setzero_si512();
    for (int q = q0; q < q1; q++) {
        const __m512i vq = _mm512_set1_epi32(q);
        acc = _mm512_dpwssd_epi32(acc, _mm512_permutex2var_epi32(r01, _mm512_add_epi32(ir, vq), r23),
                                  _mm512_permutex2var_epi32(c01, _mm512_add_epi32(ic, vq), c23));
    }
    return acc;
}

static inline __attribute__((always_inline)) void
micro_q4kx8(int nb, float * s, size_t bs, const uint8_t * x, size_t bx, int nr,
            const uint8_t * y, size_t by, int nc, const int pairs) {
    const block_q4_K * xr[TR];
    const block_q8_K * yc[TC];
    for (int r = 0; r < TR; r++) xr[r] = (const block_q4_K *) (x + (size_t) (r < nr ? r : nr - 1) * bx);
    for (int c = 0; c < TC; c++) yc[c] = (const block_q8_K *) (y + (size_t) (c < nc ? c : nc - 1) * by);
    __m512 facc = _mm512_setzero_ps(), macc = _mm512_setzero_ps();
    const __m512i zero16 = _mm512_setzero_si512();
    for (int b = 0; b < nb; b++) {
        uint64_t sc[TR];
        __m256i rv[TR], cv[TC];
        float dr[TR], mr[TR], dy[TC];
        for (int r = 0; r < TR; r++) {
            uint64_t m;
            gs_unpack_scales_k4(xr[r][b].scales, &sc[r], &m);
            const __m128i m8 = _mm_cvtsi64_si128((long long) m);
            rv[r] = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));   /* (m_q, m_q) pairs */
            dr[r] = _cvtsh_ss(xr[r][b].d);
            mr[r] = _cvtsh_ss(xr[r][b].dmin);
        }
        for (int c = 0; c < TC; c++) {
            cv[c] = _mm256_loadu_si256((const __m256i *) yc[c][b].bsums);
            dy[c] = yc[c][b].d;
        }
        const __m512 d = outer4(_mm_loadu_ps(dr), _mm_loadu_ps(dy));
        const __m512 dmin = outer4(_mm_loadu_ps(mr), _mm_loadu_ps(dy));
        __m512i acc[TR * TC];
        for (int i = 0; i < TR * TC; i++) acc[i] = zero16;
        for (int k = 0; k < 4; k++) {
            __m512i w[TR], scv[TR];
            for (int r = 0; r < TR; r++) {
                w[r] = k4_weights(xr[r][b].qs, zero16, k, 0);
                scv[r] = scale_pair(sc[r], k);
            }
            for (int c = 0; c < TC; c++) {
                const __m512i v = _mm512_loadu_si512(yc[c][b].qs + 64 * k);
                for (int r = 0; r < TR; r++) {
                    acc[4 * r + c] = _mm512_dpwssd_epi32(acc[4 * r + c], _mm512_maddubs_epi16(w[r], v), scv[r]);
                }
            }
            if (pairs) {   /* step: sub-blocks 2k, 2k + 1 */
                facc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(reduce16(acc)), d, facc);
                macc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(rowcol_dot_sub(rv, cv, 2 * k, 2 * k + 2)), dmin, macc);
                for (int i = 0; i < TR * TC; i++) acc[i] = zero16;
            }
        }
        if (!pairs) {      /* step: the super-block */
            facc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(reduce16(acc)), d, facc);
            macc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(rowcol_dot_sub(rv, cv, 0, 8)), dmin, macc);
        }
    }
    float out[16];
    _mm512_storeu_ps(out, _mm512_sub_ps(facc, macc));
    for (int c = 0; c < nc; c++) {
        for (int r = 0; r < nr; r++) s[(size_t) c * bs + r] = out[4 * r + c];
    }
}

void gs_avx512_q4kx8_tile(int n, float * s, size_t bs, const void * vx, size_t bx,
                          const void * vy, size_t by, int nr, int nc, int pairs) {
    const uint8_t * x = vx, * y = vy;
    if (nc == 1 && !pairs) {   /* one activation row (GEMV): 4 weight rows at a time */
        gs_avx512_q4kx8_dot_rows(n, s, x, bx, y, nr);
        return;
    }
    for (int r0 = 0; r0 < nr; r0 += TR) {
        for (int c0 = 0; c0 < nc; c0 += TC) {
            micro_q4kx8(n / QK_K, s + (size_t) c0 * bs + r0, bs, x + (size_t) r0 * bx, bx,
                        nr - r0 < TR ? nr - r0 : TR, y + (size_t) c0 * by, by,
                        nc - c0 < TC ? nc - c0 : TC, pairs);
        }
    }
}
