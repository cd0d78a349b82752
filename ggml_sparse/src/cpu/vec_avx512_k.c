/*
 * vec_avx512_k.c - AVX-512 VNNI dot products of the K types (Q4_K, Q5_K,
 * Q6_K) with Q8_K activations, one 256-weight super-block per step,
 * bit-identical to vec_generic.c (8 int32 lanes per super-block, one fused
 * multiply-add per lane and super-block).
 *
 * Unsigned weights times signed activations go through vpmaddubsw (pairs
 * summed into int16; no saturation: 63 * 128 * 2 < 32767) and vpdpwssd,
 * which multiplies those pairs by the 16-bit sub-block scale and adds them
 * into int32 lanes. Weight offsets (Q4_K/Q5_K mins, Q6_K's -32) are applied
 * once per super-block through the activation sums bsums.
 */
#include "vec_avx512.h"
#include "repack.h"
#include "vec_k_scales.h"

#include <math.h>

/* int16 lanes 0..15 = scale 2k, lanes 16..31 = scale 2k + 1, from the
 * scale bytes repeated in every 128-bit lane of scb. */
static inline __m512i scale_pair(__m512i scb, int k) {
    const __m512i ctrl = _mm512_inserti64x4(_mm512_set1_epi16((short) (0x8000 + 2 * k)),
                                            _mm256_set1_epi16((short) (0x8001 + 2 * k)), 1);
    return _mm512_shuffle_epi8(scb, ctrl);
}

/* The Q4_K/Q5_K mins term of a super-block as 8 lanes: lane j =
 * m_j (bsums_2j + bsums_2j+1). */
static inline __m256i mins_dot8(uint64_t m, const int16_t * bsums) {
    const __m128i m8 = _mm_cvtsi64_si128((long long) m);
    const __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
    return _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) bsums), m16);
}

/* ... as Q4_K's 4 lanes: lane i = lanes 2i + 2i+1 */
static inline __m128i mins_dot(uint64_t m, const int16_t * bsums) {
    const __m256i p = mins_dot8(m, bsums);
    return _mm_hadd_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
}

/* Q5_K's mins term, deferred: the 8-lane products p[k] of up to 8
 * consecutive super-blocks are summed together (lane k of one register),
 * then added as summs = fma(dmin[k], total_k, summs) in block order. */
static inline float q5k_mins_flush(const __m256i * p, const float * dmin, int count, float summs) {
    const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
    const __m256i a = _mm256_hadd_epi32(h01, h23), b = _mm256_hadd_epi32(h45, h67);
    /* a: halves of blocks 0..3 in each 128-bit lane, b: of blocks 4..7 */
    const __m256i tot = _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
    float t[8];
    _mm256_storeu_ps(t, _mm256_cvtepi32_ps(tot));
    for (int k = 0; k < count; k++) summs = fmaf(dmin[k], t[k], summs);
    return summs;
}

/* vec_generic.c's 8 integer lanes from 16 dword lanes: dword l and l + 8
 * hold bytes 4l..4l+3 of the first and second 32 of each 64 weights */
static inline __m256 k_lanes(__m512i acc) {
    return _mm256_cvtepi32_ps(_mm256_add_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1)));
}

/* Bit 2k (weights 64k..64k+31) and 2k+1 (weights 64k+32..64k+63) of qh,
 * given qhz = [qh, qh >> 1], moved to bit 4 of each byte (other bits junk). */
static inline __m512i q5k_high_bits(__m512i qhz, int k) {
    switch (k) {
        case 0: return _mm512_slli_epi16(qhz, 4);
        case 1: return _mm512_slli_epi16(qhz, 2);
        case 2: return qhz;
        default: return _mm512_srli_epi16(qhz, 2);
    }
}

/* Q4_K (high = 0) and Q5_K (high = 1) share the body. The mins term goes
 * to 4 float lanes (Q4_K) or one float (Q5_K). */
static inline void dot_k4(int n, float * s, const void * vx, const void * vy, const int high) {
    const block_q8_K * y = vy;
    const __m512i m0F = _mm512_set1_epi8(0x0F), m10 = _mm512_set1_epi8(0x10);
    __m256 facc = _mm256_setzero_ps();
    __m128 macc = _mm_setzero_ps();
    float summs = 0.0f;
    __m256i pend[8];          /* Q5_K: deferred mins products (q5k_mins_flush) */
    float pend_dmin[8];
    int npend = 0;
    for (int b = 0; b < n / QK_K; b++) {
        const uint8_t * qs, * scales;
        gs_half d16, dmin16;
        __m512i qhz = _mm512_setzero_si512();
        if (high) {
            const block_q5_K * x = (const block_q5_K *) vx + b;
            qs = x->qs, scales = x->scales, d16 = x->d, dmin16 = x->dmin;
            const __m256i qh = _mm256_loadu_si256((const __m256i *) x->qh);
            qhz = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 1), 1);
        } else {
            const block_q4_K * x = (const block_q4_K *) vx + b;
            qs = x->qs, scales = x->scales, d16 = x->d, dmin16 = x->dmin;
        }
        uint64_t sc, m;
        gs_unpack_scales_k4(scales, &sc, &m);
        const __m512i scb = _mm512_broadcast_i32x4(_mm_cvtsi64_si128((long long) sc));
        __m512i acc = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *) (qs + 32 * k));
            __m512i qz = _mm512_and_si512(
                _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), m0F);
            if (high) qz = _mm512_ternarylogic_epi32(qz, q5k_high_bits(qhz, k), m10, 0xF8);
            const __m512i v = _mm512_loadu_si512(y[b].qs + 64 * k);
            acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(qz, v), scale_pair(scb, k));
        }
        /* [d, dmin] * d_y; the mins term is subtracted */
        const __m128 dd = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(d16 | (uint32_t) dmin16 << 16)),
                                     _mm_set1_ps(y[b].d));
        const __m128 dmin = _mm_movehdup_ps(dd);
        if (high) {
            pend[npend] = mins_dot8(m, y[b].bsums);
            pend_dmin[npend++] = -_mm_cvtss_f32(dmin);
            if (npend == 8) summs = q5k_mins_flush(pend, pend_dmin, 8, summs), npend = 0;
        } else {
            macc = _mm_fnmadd_ps(_mm_broadcastss_ps(dmin), _mm_cvtepi32_ps(mins_dot(m, y[b].bsums)), macc);
        }
        facc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), k_lanes(acc), facc);
    }
    if (high && npend) {
        for (int k = npend; k < 8; k++) pend[k] = _mm256_setzero_si256();
        summs = q5k_mins_flush(pend, pend_dmin, npend, summs);
    }
    if (!high) {
        macc = _mm_add_ps(macc, _mm_movehl_ps(macc, macc));   /* (0 + 2), (1 + 3) */
        summs = _mm_cvtss_f32(_mm_add_ss(macc, _mm_movehdup_ps(macc)));
    }
    *s = gs256_hsum(facc) + summs;
}

void gs_avx512_dot_q4_K(int n, float * s, const void * vx, const void * vy) {
    dot_k4(n, s, vx, vy, 0);
}

void gs_avx512_dot_q5_K(int n, float * s, const void * vx, const void * vy) {
    dot_k4(n, s, vx, vy, 1);
}

void gs_avx512_dot_q6_K(int n, float * s, const void * vx, const void * vy) {
    const block_q6_K * x = vx;
    const block_q8_K * y = vy;
    const __m512i m0F = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    /* word lane w of the scale vector for weights 64g..64g+63 of a half: g*4 + w/8 */
    const __m512i sidx = _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2,
                                          1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m256 facc = _mm256_setzero_ps();
    for (int b = 0; b < n / QK_K; b++) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) x[b].scales));
        const __m512i scz = _mm512_castsi256_si512(sc16);
        __m512i acc = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            const __m512i ql = _mm512_loadu_si512(x[b].ql + 64 * h);
            const __m256i qh = _mm256_loadu_si256((const __m256i *) (x[b].qh + 32 * h));
            const __m512i qhz = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
            const __m512i lo = _mm512_or_si512(_mm512_and_si512(ql, m0F),
                                               _mm512_and_si512(_mm512_slli_epi16(qhz, 4), m30));
            const __m512i hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m0F),
                                               _mm512_and_si512(qhz, m30));
            const __m512i slo = _mm512_permutexvar_epi16(_mm512_add_epi16(sidx, _mm512_set1_epi16((short) (8 * h))), scz);
            const __m512i shi = _mm512_permutexvar_epi16(_mm512_add_epi16(sidx, _mm512_set1_epi16((short) (8 * h + 4))), scz);
            acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(lo, _mm512_loadu_si512(y[b].qs + 128 * h)), slo);
            acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(hi, _mm512_loadu_si512(y[b].qs + 128 * h + 64)), shi);
        }
        /* q - 32: lane l subtracts 32 (sc_2l bsums_2l + sc_2l+1 bsums_2l+1) */
        const __m256i corr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) y[b].bsums), sc16);
        acc = _mm512_sub_epi32(acc, _mm512_zextsi256_si512(_mm256_slli_epi32(corr, 5)));
        facc = _mm256_fmadd_ps(_mm256_set1_ps(y[b].d * _cvtsh_ss(x[b].d)), k_lanes(acc), facc);
    }
    *s = gs256_hsum(facc);
}

/* Q4_K in llama.cpp's repacked order (repack.h): the integer sums of one
 * step exact, then one fused multiply-add each for the scales and mins. */
void gs_avx512_q4kx8_dot(int n, float * s, const void * vx, const void * vy, int pairs) {
    const block_q4_K * x = vx;
    const block_q8_K * y = vy;
    const __m512i m0F = _mm512_set1_epi8(0x0F);
    float acc = 0.0f, accm = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        uint64_t sc, m;
        gs_unpack_scales_k4(x[b].scales, &sc, &m);
        const __m512i scb = _mm512_broadcast_i32x4(_mm_cvtsi64_si128((long long) sc));
        int32_t mins[8];   /* m_j (bsums_2j + bsums_2j+1) */
        _mm256_storeu_si256((__m256i *) mins, mins_dot8(m, y[b].bsums));
        const float d = _cvtsh_ss(x[b].d) * y[b].d, dmin = _cvtsh_ss(x[b].dmin) * y[b].d;
        __m512i sum = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {   /* sub-blocks 2k, 2k + 1 */
            const __m256i q = _mm256_loadu_si256((const __m256i *) (x[b].qs + 32 * k));
            const __m512i qz = _mm512_and_si512(
                _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), m0F);
            const __m512i v = _mm512_loadu_si512(y[b].qs + 64 * k);
            const __m512i t = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_maddubs_epi16(qz, v),
                                                  scale_pair(scb, k));
            if (pairs) {
                acc = fmaf((float) _mm512_reduce_add_epi32(t), d, acc);
                accm = fmaf((float) (mins[2 * k] + mins[2 * k + 1]), dmin, accm);
            } else {
                sum = _mm512_add_epi32(sum, t);
            }
        }
        if (!pairs) {
            int s2 = 0;
            for (int j = 0; j < 8; j++) s2 += mins[j];
            acc = fmaf((float) _mm512_reduce_add_epi32(sum), d, acc);
            accm = fmaf((float) s2, dmin, accm);
        }
    }
    *s = acc - accm;
}
