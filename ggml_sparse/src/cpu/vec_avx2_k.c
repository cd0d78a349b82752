/*
 * vec_avx2_k.c - AVX2 dot products of the K types (Q4_K, Q5_K, Q6_K) with
 * Q8_K activations, one 256-weight super-block per step, bit-identical to
 * vec_generic.c (8 int32 lanes per super-block, one fused multiply-add per
 * lane and super-block).
 *
 * Unsigned weights times signed activations go through vpmaddubsw (pairs
 * into int16, no saturation: 63 * 128 * 2 < 32767) and vpmaddwd with the
 * 16-bit sub-block scale. Weight offsets (Q4_K/Q5_K mins, Q6_K's -32) are
 * applied once per super-block through the activation sums bsums.
 * Decode (one activation row) of Q4_K (plain and in the repacked order)
 * and Q6_K takes 4 weight rows at a time (the tile kernels below): the same
 * per-row operations, interleaved, with the next rows prefetched.
 */
#include "vec_avx2.h"
#include "repack.h"
#include "vec_k_scales.h"

#include <math.h>

/* int16 word j of each 128-bit lane of v, in all 8 words of that lane */
static inline __m256i word_bcast(__m256i v, int j) {
    return _mm256_shuffle_epi8(v, _mm256_set1_epi16((short) ((2 * j + 1) << 8 | 2 * j)));
}

/* bit `bit` of every byte moved to bit 4 (the other bits junk) */
static inline __m256i bit_to_4(__m256i v, int bit) {
    return bit <= 4 ? _mm256_slli_epi16(v, 4 - bit) : _mm256_srli_epi16(v, bit - 4);
}

/* The mins term of a super-block: lane i = m_2i (bsums_4i + bsums_4i+1) +
 * m_2i+1 (bsums_4i+2 + bsums_4i+3), i < 4 (lane j of the madd is
 * m_j (bsums_2j + bsums_2j+1)). */
static inline __m128i mins_dot(uint64_t m, const int16_t * bsums) {
    const __m128i m8 = _mm_cvtsi64_si128((long long) m);
    const __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
    const __m256i p = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) bsums), m16);
    return _mm_hadd_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
}

/* One Q4_K (high = 0) / Q5_K (high = 1) super-block b against y: returns
 * the integer lanes of vec_generic.c (dword l: bytes 4l..4l+3 of each 32),
 * sets *mins to the mins term's 4 lanes and *d, *dmin to the block's
 * scales as floats. */
static inline __m256i k4_block(const void * vx, int b, const block_q8_K * y, const int high,
                               __m128i * mins, float * d, float * dmin) {
    const __m256i m0F = _mm256_set1_epi8(0x0F), m10 = _mm256_set1_epi8(0x10);
    const uint8_t * qs, * scales;
    gs_half d16, dmin16;
    __m256i qh = _mm256_setzero_si256();
    if (high) {
        const block_q5_K * x = (const block_q5_K *) vx + b;
        qs = x->qs, scales = x->scales, d16 = x->d, dmin16 = x->dmin;
        qh = _mm256_loadu_si256((const __m256i *) x->qh);
    } else {
        const block_q4_K * x = (const block_q4_K *) vx + b;
        qs = x->qs, scales = x->scales, d16 = x->d, dmin16 = x->dmin;
    }
    uint64_t sc, m;
    gs_unpack_scales_k4(scales, &sc, &m);
    const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long) sc)));
    __m256i acc = _mm256_setzero_si256();
    for (int k = 0; k < 4; k++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *) (qs + 32 * k));
        __m256i lo = _mm256_and_si256(q, m0F);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m0F);
        if (high) {
            lo = _mm256_or_si256(lo, _mm256_and_si256(bit_to_4(qh, 2 * k), m10));
            hi = _mm256_or_si256(hi, _mm256_and_si256(bit_to_4(qh, 2 * k + 1), m10));
        }
        const __m256i plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *) (y->qs + 64 * k)));
        const __m256i phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *) (y->qs + 64 * k + 32)));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(plo, word_bcast(sc16, 2 * k)));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(phi, word_bcast(sc16, 2 * k + 1)));
    }
    *mins = mins_dot(m, y->bsums);
    *d = _cvtsh_ss(d16);
    *dmin = _cvtsh_ss(dmin16);
    return acc;
}

/* vec_dot order: the mins term goes to 4 float lanes (Q4_K) or one float
 * (Q5_K). */
static inline void dot_k4(int n, float * s, const void * vx, const void * vy, const int high) {
    const block_q8_K * y = vy;
    __m256 facc = _mm256_setzero_ps();
    __m128 macc = _mm_setzero_ps();
    float summs = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        __m128i mins;
        float dx, dminx;
        const __m256i acc = k4_block(vx, b, &y[b], high, &mins, &dx, &dminx);
        const float d = y[b].d * dx, dmin = -y[b].d * dminx;
        if (high) {
            summs = fmaf(dmin, (float) gs_hsum4_epi32(mins), summs);
        } else {
            macc = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(mins), macc);
        }
        facc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(acc), facc);
    }
    if (!high) {
        macc = _mm_add_ps(macc, _mm_movehl_ps(macc, macc));   /* (0 + 2), (1 + 3) */
        summs = _mm_cvtss_f32(_mm_add_ss(macc, _mm_movehdup_ps(macc)));
    }
    *s = gs_avx2_hsum_ps(facc) + summs;
}

void gs_avx2_dot_q4_K(int n, float * s, const void * vx, const void * vy) {
    dot_k4(n, s, vx, vy, 0);
}

/* Decode (one activation row): 4 rows of gs_avx2_dot_q4_K at a time, each
 * with its own accumulators and the same operations in the same order (4
 * independent chains, 4 streams; the next 4 rows' blocks prefetched into L2). */
static void dot_q4_K_4rows(int n, float * s, const uint8_t * x, size_t bx, const block_q8_K * y) {
    __m256 facc[4];
    __m128 macc[4];
    for (int r = 0; r < 4; r++) facc[r] = _mm256_setzero_ps(), macc[r] = _mm_setzero_ps();
    for (int b = 0; b < n / QK_K; b++) {
        for (int r = 0; r < 4; r++) {
            const char * pf = (const char *) ((const block_q4_K *) (x + (size_t) (r + 4) * bx) + b);
            _mm_prefetch(pf, _MM_HINT_T1);
            _mm_prefetch(pf + 64, _MM_HINT_T1);
            _mm_prefetch(pf + 128, _MM_HINT_T1);
            __m128i mins;
            float dx, dminx;
            const __m256i acc = k4_block(x + (size_t) r * bx, b, &y[b], 0, &mins, &dx, &dminx);
            const float d = y[b].d * dx, dmin = -y[b].d * dminx;
            macc[r] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(mins), macc[r]);
            facc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(acc), facc[r]);
        }
    }
    for (int r = 0; r < 4; r++) {
        const __m128 m = _mm_add_ps(macc[r], _mm_movehl_ps(macc[r], macc[r]));   /* (0 + 2), (1 + 3) */
        s[r] = gs_avx2_hsum_ps(facc[r]) + _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
    }
}

/* vec_dot_tile of Q4_K: gs_avx2_dot_q4_K's value for every (row, column) */
void gs_avx2_tile_q4_K(int n, float * s, size_t bs, const void * vx, size_t bx,
                       const void * vy, size_t by, int nr, int nc) {
    const uint8_t * x = vx, * y = vy;
    if (nc == 1) {
        int r = 0;
        for (; r + 4 <= nr; r += 4) dot_q4_K_4rows(n, s + r, x + (size_t) r * bx, bx, vy);
        for (; r < nr; r++) gs_avx2_dot_q4_K(n, s + r, x + (size_t) r * bx, vy);
        return;
    }
    for (int c = 0; c < nc; c++) {
        for (int r = 0; r < nr; r++) gs_avx2_dot_q4_K(n, s + (size_t) c * bs + r, x + (size_t) r * bx, y + (size_t) c * by);
    }
}

void gs_avx2_dot_q5_K(int n, float * s, const void * vx, const void * vy) {
    dot_k4(n, s, vx, vy, 1);
}

/* One Q6_K super-block against y: vec_generic.c's integer lanes, the -32
 * included (lane l subtracts 32 (sc_2l bsums_2l + sc_2l+1 bsums_2l+1)). */
static inline __m256i q6_block(const block_q6_K * x, const block_q8_K * y) {
    const __m256i m0F = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    __m256i acc = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
        /* the 8 scales of this half, as int16, in both 128-bit lanes */
        const __m256i sc = _mm256_broadcastsi128_si256(
            _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *) (x->scales + 8 * h))));
        const __m256i ql0 = _mm256_loadu_si256((const __m256i *) (x->ql + 64 * h));
        const __m256i ql1 = _mm256_loadu_si256((const __m256i *) (x->ql + 64 * h + 32));
        const __m256i qh = _mm256_loadu_si256((const __m256i *) (x->qh + 32 * h));
        __m256i q[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m0F), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
        q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m0F), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m0F), _mm256_and_si256(qh, m30));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m0F),
                               _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
        for (int i = 0; i < 4; i++) {
            /* weights 32i..32i+31 of the half: sub-blocks 2i (low lane), 2i+1 (high lane) */
            const __m256i scv = _mm256_shuffle_epi8(sc, _mm256_set_m128i(
                _mm_set1_epi16((short) ((4 * i + 3) << 8 | (4 * i + 2))),
                _mm_set1_epi16((short) ((4 * i + 1) << 8 | (4 * i)))));
            const __m256i v = _mm256_loadu_si256((const __m256i *) (y->qs + 128 * h + 32 * i));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(q[i], v), scv));
        }
    }
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) x->scales));
    const __m256i corr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) y->bsums), sc16);
    return _mm256_sub_epi32(acc, _mm256_slli_epi32(corr, 5));
}

void gs_avx2_dot_q6_K(int n, float * s, const void * vx, const void * vy) {
    const block_q6_K * x = vx;
    const block_q8_K * y = vy;
    __m256 facc = _mm256_setzero_ps();
    for (int b = 0; b < n / QK_K; b++) {
        const __m256i acc = q6_block(&x[b], &y[b]);
        facc = _mm256_fmadd_ps(_mm256_set1_ps(y[b].d * _cvtsh_ss(x[b].d)), _mm256_cvtepi32_ps(acc), facc);
    }
    *s = gs_avx2_hsum_ps(facc);
}

/* vec_dot_tile of Q6_K: gs_avx2_dot_q6_K's value for every (row, column);
 * one activation row takes 4 weight rows at a time (the same per-row
 * operations, interleaved, with the next 4 rows' blocks prefetched) */
static void dot_q6_K_4rows(int n, float * s, const uint8_t * x, size_t bx, const block_q8_K * y) {
    __m256 facc[4];
    for (int r = 0; r < 4; r++) facc[r] = _mm256_setzero_ps();
    for (int b = 0; b < n / QK_K; b++) {
        for (int r = 0; r < 4; r++) {
            const char * pf = (const char *) ((const block_q6_K *) (x + (size_t) (r + 4) * bx) + b);
            for (int o = 0; o < (int) sizeof(block_q6_K); o += 64) _mm_prefetch(pf + o, _MM_HINT_T1);
            const block_q6_K * xb = (const block_q6_K *) (x + (size_t) r * bx) + b;
            const __m256i acc = q6_block(xb, &y[b]);
            facc[r] = _mm256_fmadd_ps(_mm256_set1_ps(y[b].d * _cvtsh_ss(xb->d)), _mm256_cvtepi32_ps(acc), facc[r]);
        }
    }
    for (int r = 0; r < 4; r++) s[r] = gs_avx2_hsum_ps(facc[r]);
}

void gs_avx2_tile_q6_K(int n, float * s, size_t bs, const void * vx, size_t bx,
                       const void * vy, size_t by, int nr, int nc) {
    const uint8_t * x = vx, * y = vy;
    if (nc == 1) {
        int r = 0;
        for (; r + 4 <= nr; r += 4) dot_q6_K_4rows(n, s + r, x + (size_t) r * bx, bx, vy);
        for (; r < nr; r++) gs_avx2_dot_q6_K(n, s + r, x + (size_t) r * bx, vy);
        return;
    }
    for (int c = 0; c < nc; c++) {
        for (int r = 0; r < nr; r++) gs_avx2_dot_q6_K(n, s + (size_t) c * bs + r, x + (size_t) r * bx, y + (size_t) c * by);
    }
}

/* ---- batched order (gemm_tile; vec_generic.c): per super-block the integer
 * totals s1 (all lanes) and s2 (the mins), then
 * acc = fma(fma(-dmin_x, s2, s1 d_x), d_y, acc). A weight row's super-block
 * is unpacked once for up to GC activation rows. */
#define GC 4

/* One Q4_K / Q5_K super-block unpacked: codes per sub-block j and their
 * scales as int16 words */
typedef struct {
    __m256i q[8], sc[8];
    uint64_t m;
    float d, dmin;
} k4_unpacked;

static inline void k4_unpack(const void * vx, int b, const int high, k4_unpacked * u) {
    const __m256i m0F = _mm256_set1_epi8(0x0F), m10 = _mm256_set1_epi8(0x10);
    const uint8_t * qs, * scales;
    gs_half d16, dmin16;
    __m256i qh = _mm256_setzero_si256();
    if (high) {
        const block_q5_K * x = (const block_q5_K *) vx + b;
        qs = x->qs, scales = x->scales, d16 = x->d, dmin16 = x->dmin;
        qh = _mm256_loadu_si256((const __m256i *) x->qh);
    } else {
        const block_q4_K * x = (const block_q4_K *) vx + b;
        qs = x->qs, scales = x->scales, d16 = x->d, dmin16 = x->dmin;
    }
    uint64_t sc;
    gs_unpack_scales_k4(scales, &sc, &u->m);
    const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long) sc)));
    for (int k = 0; k < 4; k++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *) (qs + 32 * k));
        __m256i lo = _mm256_and_si256(q, m0F), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m0F);
        if (high) {
            lo = _mm256_or_si256(lo, _mm256_and_si256(bit_to_4(qh, 2 * k), m10));
            hi = _mm256_or_si256(hi, _mm256_and_si256(bit_to_4(qh, 2 * k + 1), m10));
        }
        u->q[2 * k] = lo, u->q[2 * k + 1] = hi;
        u->sc[2 * k] = word_bcast(sc16, 2 * k), u->sc[2 * k + 1] = word_bcast(sc16, 2 * k + 1);
    }
    u->d = _cvtsh_ss(d16);
    u->dmin = _cvtsh_ss(dmin16);
}

static void gemm_k4_row(int n, float * s, size_t bs, const void * vx, const uint8_t * y, size_t by,
                        int nc, const int high) {
    float acc[GC] = { 0 };
    for (int b = 0; b < n / QK_K; b++) {
        k4_unpacked u;
        k4_unpack(vx, b, high, &u);
        for (int c = 0; c < nc; c++) {
            const block_q8_K * yb = (const block_q8_K *) (y + (size_t) c * by) + b;
            __m256i a = _mm256_setzero_si256();
            for (int j = 0; j < 8; j++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *) (yb->qs + 32 * j));
                a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(u.q[j], v), u.sc[j]));
            }
            const int s1 = gs_avx2_hsum_epi32(a), s2 = gs_hsum4_epi32(mins_dot(u.m, yb->bsums));
            acc[c] = fmaf(fmaf(-u.dmin, (float) s2, (float) s1 * u.d), yb->d, acc[c]);
        }
    }
    for (int c = 0; c < nc; c++) s[(size_t) c * bs] = acc[c];
}

static void gemm_q6_row(int n, float * s, size_t bs, const void * vx, const uint8_t * y, size_t by, int nc) {
    const block_q6_K * x = vx;
    const __m256i m0F = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    float acc[GC] = { 0 };
    for (int b = 0; b < n / QK_K; b++) {
        /* codes (q + 32) and scales of weights 32i..32i+31 of half h: q[4h + i] */
        __m256i q[8], scv[8];
        for (int h = 0; h < 2; h++) {
            const __m256i sc = _mm256_broadcastsi128_si256(
                _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *) (x[b].scales + 8 * h))));
            const __m256i ql0 = _mm256_loadu_si256((const __m256i *) (x[b].ql + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i *) (x[b].ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *) (x[b].qh + 32 * h));
            q[4 * h] = _mm256_or_si256(_mm256_and_si256(ql0, m0F), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
            q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m0F), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
            q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m0F), _mm256_and_si256(qh, m30));
            q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m0F),
                                           _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
            for (int i = 0; i < 4; i++) {
                scv[4 * h + i] = _mm256_shuffle_epi8(sc, _mm256_set_m128i(
                    _mm_set1_epi16((short) ((4 * i + 3) << 8 | (4 * i + 2))),
                    _mm_set1_epi16((short) ((4 * i + 1) << 8 | (4 * i)))));
            }
        }
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) x[b].scales));
        const float dx = _cvtsh_ss(x[b].d);
        for (int c = 0; c < nc; c++) {
            const block_q8_K * yb = (const block_q8_K *) (y + (size_t) c * by) + b;
            __m256i a = _mm256_setzero_si256();
            for (int j = 0; j < 8; j++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *) (yb->qs + 32 * j));
                a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], v), scv[j]));
            }
            /* q - 32 */
            const __m256i corr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) yb->bsums), sc16);
            const int s1 = gs_avx2_hsum_epi32(_mm256_sub_epi32(a, _mm256_slli_epi32(corr, 5)));
            acc[c] = fmaf((float) s1 * dx, yb->d, acc[c]);
        }
    }
    for (int c = 0; c < nc; c++) s[(size_t) c * bs] = acc[c];
}

/* rows x columns, GC columns per pass over a weight row */
#define GEMM_TILE(name, ROW_CALL)                                                              \
void gs_avx2_gemm_##name(int n, float * s, size_t bs, const void * vx, size_t bx,              \
                         const void * vy, size_t by, int nr, int nc) {                         \
    const uint8_t * x = vx, * y = vy;                                                          \
    for (int c0 = 0; c0 < nc; c0 += GC) {                                                      \
        const int cc = nc - c0 < GC ? nc - c0 : GC;                                            \
        for (int r = 0; r < nr; r++) {                                                         \
            float * o = s + (size_t) c0 * bs + r;                                              \
            const void * xr = x + (size_t) r * bx;                                             \
            const uint8_t * yc = y + (size_t) c0 * by;                                         \
            ROW_CALL;                                                                          \
        }                                                                                      \
    }                                                                                          \
}
GEMM_TILE(q4_K, gemm_k4_row(n, o, bs, xr, yc, by, cc, 0))
GEMM_TILE(q5_K, gemm_k4_row(n, o, bs, xr, yc, by, cc, 1))
GEMM_TILE(q6_K, gemm_q6_row(n, o, bs, xr, yc, by, cc))

/* Q4_K in llama.cpp's repacked order (repack.h): the integer sums of one
 * step exact, then one fused multiply-add each for the scales and mins. */
void gs_avx2_q4kx8_dot(int n, float * s, const void * vx, const void * vy, int pairs) {
    const block_q4_K * x = vx;
    const block_q8_K * y = vy;
    const __m256i m0F = _mm256_set1_epi8(0x0F);
    float acc = 0.0f, accm = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        uint64_t sc, m;
        gs_unpack_scales_k4(x[b].scales, &sc, &m);
        const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long) sc)));
        const __m128i m8 = _mm_cvtsi64_si128((long long) m);
        int32_t mins[8];   /* m_j (bsums_2j + bsums_2j+1) */
        _mm256_storeu_si256((__m256i *) mins, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) y[b].bsums),
                                                               _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8))));
        const float d = _cvtsh_ss(x[b].d) * y[b].d, dmin = _cvtsh_ss(x[b].dmin) * y[b].d;
        __m256i sum = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {   /* sub-blocks 2k, 2k + 1 */
            const __m256i q = _mm256_loadu_si256((const __m256i *) (x[b].qs + 32 * k));
            const __m256i lo = _mm256_and_si256(q, m0F);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m0F);
            const __m256i plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *) (y[b].qs + 64 * k)));
            const __m256i phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *) (y[b].qs + 64 * k + 32)));
            const __m256i t = _mm256_add_epi32(_mm256_madd_epi16(plo, word_bcast(sc16, 2 * k)),
                                               _mm256_madd_epi16(phi, word_bcast(sc16, 2 * k + 1)));
            if (pairs) {
                const int s1 = gs_hsum4_epi32(_mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1)));
                acc = fmaf((float) s1, d, acc);
                accm = fmaf((float) (mins[2 * k] + mins[2 * k + 1]), dmin, accm);
            } else {
                sum = _mm256_add_epi32(sum, t);
            }
        }
        if (!pairs) {
            int s2 = 0;
            for (int j = 0; j < 8; j++) s2 += mins[j];
            const int s1 = gs_hsum4_epi32(_mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1)));
            acc = fmaf((float) s1, d, acc);
            accm = fmaf((float) s2, dmin, accm);
        }
    }
    *s = acc - accm;
}

/* The same (super-block steps) for 4 rows at a time, each with its own
 * accumulators and the same operations in the same order. */
static void q4kx8_4rows(int n, float * s, const uint8_t * x, size_t bx, const block_q8_K * y) {
    const __m256i m0F = _mm256_set1_epi8(0x0F);
    float acc[4] = { 0 }, accm[4] = { 0 };
    for (int b = 0; b < n / QK_K; b++) {
        for (int r = 0; r < 4; r++) {
            const block_q4_K * xb = (const block_q4_K *) (x + (size_t) r * bx) + b;
            const char * pf = (const char *) ((const block_q4_K *) (x + (size_t) (r + 4) * bx) + b);
            _mm_prefetch(pf, _MM_HINT_T1);
            _mm_prefetch(pf + 64, _MM_HINT_T1);
            _mm_prefetch(pf + 128, _MM_HINT_T1);
            uint64_t sc, m;
            gs_unpack_scales_k4(xb->scales, &sc, &m);
            const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long) sc)));
            const __m128i m8 = _mm_cvtsi64_si128((long long) m);
            const __m256i mins = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) y[b].bsums),
                                                   _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8)));
            const float d = _cvtsh_ss(xb->d) * y[b].d, dmin = _cvtsh_ss(xb->dmin) * y[b].d;
            __m256i sum = _mm256_setzero_si256();
            for (int k = 0; k < 4; k++) {
                const __m256i q = _mm256_loadu_si256((const __m256i *) (xb->qs + 32 * k));
                const __m256i lo = _mm256_and_si256(q, m0F);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m0F);
                const __m256i plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *) (y[b].qs + 64 * k)));
                const __m256i phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *) (y[b].qs + 64 * k + 32)));
                sum = _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_madd_epi16(plo, word_bcast(sc16, 2 * k)),
                                                             _mm256_madd_epi16(phi, word_bcast(sc16, 2 * k + 1))));
            }
            const int s1 = gs_hsum4_epi32(_mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1)));
            const int s2 = gs_hsum4_epi32(_mm_add_epi32(_mm256_castsi256_si128(mins), _mm256_extracti128_si256(mins, 1)));
            acc[r] = fmaf((float) s1, d, acc[r]);
            accm[r] = fmaf((float) s2, dmin, accm[r]);
        }
    }
    for (int r = 0; r < 4; r++) s[r] = acc[r] - accm[r];
}

/* gs_q4kx8_tile_fn: one activation row (decode) 4 weight rows at a time,
 * otherwise gs_avx2_q4kx8_dot per output */
void gs_avx2_q4kx8_tile(int n, float * s, size_t bs, const void * vx, size_t bx,
                        const void * vy, size_t by, int nr, int nc, int pairs) {
    const uint8_t * x = vx, * y = vy;
    int r0 = 0;
    if (nc == 1 && !pairs) {
        for (; r0 + 4 <= nr; r0 += 4) q4kx8_4rows(n, s + r0, x + (size_t) r0 * bx, bx, vy);
    }
    for (int c = 0; c < nc; c++) {
        for (int r = r0; r < nr; r++) {
            gs_avx2_q4kx8_dot(n, s + (size_t) c * bs + r, x + (size_t) r * bx, y + (size_t) c * by, pairs);
        }
    }
}
