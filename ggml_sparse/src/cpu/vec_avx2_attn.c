/*
 * vec_avx2_attn.c - attention of one query head over F16 caches with AVX2,
 * bit-identical to the scalar kernel of ops_attention_f16.c (whose header
 * states llama.cpp's order of operations). D % 8 == 0.
 *
 * As vec_avx512_attn.c with 8-float registers: a slot's 64 dot-product
 * lanes are 8 ymm registers; the first tree level (8 + 8) is done per slot,
 * the rest (4 + 4, (0 + 2) + (1 + 3)) for 8 slots at once by a
 * shuffle-and-add network. exp scales by 2^n in two exact-then-rounded
 * multiplications, which round once, as ldexpf does.
 */
#include "vec_avx2.h"

#include <math.h>

#include "attention_f16.h"

#define CHUNK GS_ATTN_CHUNK

static inline __m256 load_h8(const gs_half * h) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) h));
}

/* Round to F16 (nearest even) and back. */
static inline __m256 round_h8(__m256 x) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* One slot's dot over np elements (np % 64 == 0), folded to the 16 lane
 * sums s and then to t[i] = s[i] + s[8 + i]. */
static inline __m256 k_lanes(const gs_half * k, const float * q, int64_t np) {
    __m256 a[8];
    for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < np; i += CHUNK) {
        for (int r = 0; r < 8; r++) {
            a[r] = _mm256_fmadd_ps(load_h8(k + i + 8 * r), _mm256_loadu_ps(q + i + 8 * r), a[r]);
        }
    }
    const __m256 s_lo = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
    const __m256 s_hi = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
    return _mm256_add_ps(s_lo, s_hi);
}

/* The rest of the tree for 8 registers of t (one per slot): slot r's sum
 * in element r. */
static inline __m256 tree8_x8(const __m256 * t) {
    __m256 m2[4], m3[2];
    for (int i = 0; i < 4; i++) {     /* u[i] = t[i] + t[4 + i]: 128-bit lane k = slot 2i+k */
        m2[i] = _mm256_add_ps(_mm256_permute2f128_ps(t[2 * i], t[2 * i + 1], 0x20),
                              _mm256_permute2f128_ps(t[2 * i], t[2 * i + 1], 0x31));
    }
    for (int i = 0; i < 2; i++) {     /* u0 + u2, u1 + u3: lane k = slots 4i+k, 4i+2+k */
        m3[i] = _mm256_add_ps(_mm256_shuffle_ps(m2[2 * i], m2[2 * i + 1], 0x44),
                              _mm256_shuffle_ps(m2[2 * i], m2[2 * i + 1], 0xEE));
    }
    /* (u0 + u2) + (u1 + u3): element 4k + j holds slot k + 2j */
    const __m256 f = _mm256_add_ps(_mm256_shuffle_ps(m3[0], m3[1], 0x88),
                                   _mm256_shuffle_ps(m3[0], m3[1], 0xDD));
    return _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Tree sum of 16 floats (two registers: elements 0-7, 8-15). */
static inline float tree16_h(__m256 lo, __m256 hi) {
    const __m256 t = _mm256_add_ps(lo, hi);
    const __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    const __m128 v = _mm_add_ps(u, _mm_movehl_ps(u, u));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
}

static inline __m256 pow2i(__m256i e) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23));
}

/* gs_expf_compat (vec_math.h) on 8 floats, operation for operation. p * 2^n
 * as (p * 2^a) * 2^(n - a), a = n / 2: the first product is exact (normal),
 * so the result is rounded once. */
static inline __m256 exp8(__m256 x) {
    const __m256 shift = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), shift);
    const __m256 n = _mm256_sub_ps(z, shift);
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                      _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 p = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.ffffecp-1f), b, _mm256_set1_ps(1.0f)));
    const __m256 big = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), n), _mm256_set1_ps(192.0f), _CMP_GT_OQ);
    const __m256i ni = _mm256_cvtps_epi32(_mm256_andnot_ps(big, n));   /* 0 in the big lanes */
    const __m256i a = _mm256_srai_epi32(ni, 1);
    const __m256 r = _mm256_mul_ps(_mm256_mul_ps(p, pow2i(a)), pow2i(_mm256_sub_epi32(ni, a)));
    const __m256 pos = _mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_GT_OQ);
    const __m256 ovf = _mm256_and_ps(pos, _mm256_set1_ps(INFINITY));
    return _mm256_blendv_ps(r, ovf, big);
}

/* scores[j] = scale * (k_j . q16) for lo <= j < n; returns their maximum. */
static float k_pass(const gs_attn_f16_scratch * S, const uint8_t * k_rows, size_t k_slot, int64_t lo, int64_t n) {
    const int64_t D = S->D, np = D & ~(int64_t) (CHUNK - 1);
    float max = -INFINITY;
    for (int64_t j0 = lo & ~(int64_t) 7; j0 < n; j0 += 8) {
        const int64_t m = n - j0 < 8 ? n - j0 : 8;
        const int r0 = j0 >= lo ? 0 : (int) (lo - j0);   /* first visible slot of the group */
        __m256 t[8];
        for (int r = 0; r < 8; r++) {
            t[r] = r < m && r >= r0 ? k_lanes((const gs_half *) (k_rows + (j0 + r) * k_slot), S->q16, np)
                                    : _mm256_setzero_ps();
        }
        float f[8];
        _mm256_storeu_ps(f, tree8_x8(t));
        for (int r = r0; r < m; r++) {
            if (np < D) {   /* elements past the last chunk, added in double */
                const gs_half * k = (const gs_half *) (k_rows + (j0 + r) * k_slot);
                double sum = np ? (double) f[r] : 0.0;
                for (int64_t i = np; i < D; i++) sum += (double) (GS_H2F(k[i]) * S->q16[i]);
                f[r] = (float) sum;
            }
            const float s = f[r] * S->scale;
            S->scores[j0 + r] = s;
            max = s > max ? s : max;
        }
    }
    return max;
}

/* scores[j] = f16(exp(scores[j] - max) / sum) for lo <= j < n (0 for the
 * masked j < lo of the first group), the sum running over n_kv slots (the
 * masked ones 0) in 16-slot trees added in double. */
static void softmax(const gs_attn_f16_scratch * S, int64_t lo, int64_t n, float max) {
    float * sc = S->scores;
    const __m256 vmax = _mm256_set1_ps(max);
    double sum = 0.0;
    for (int64_t j0 = lo & ~(int64_t) 15; j0 < n; j0 += 16) {
        const int64_t m = n - j0 < 16 ? n - j0 : 16;
        const int64_t r0 = j0 >= lo ? 0 : lo - j0;
        float e[16] = { 0 };
        memcpy(e + r0, sc + j0 + r0, (size_t) (m - r0) * sizeof(float));
        const __m256 e_lo = exp8(_mm256_sub_ps(_mm256_loadu_ps(e), vmax));
        const __m256 e_hi = exp8(_mm256_sub_ps(_mm256_loadu_ps(e + 8), vmax));
        _mm256_storeu_ps(e, e_lo);
        _mm256_storeu_ps(e + 8, e_hi);
        for (int64_t r = 0; r < r0; r++) e[r] = 0.0f;
        for (int64_t r = m; r < 16; r++) e[r] = 0.0f;
        memcpy(sc + j0, e, (size_t) m * sizeof(float));
        if (j0 + 16 <= S->n_kv) {
            sum += (double) tree16_h(_mm256_loadu_ps(e), _mm256_loadu_ps(e + 8));
        } else {   /* the last slots when n_kv is not a multiple of 16 */
            for (int64_t r = 0; r < m; r++) sum += (double) e[r];
        }
    }
    const __m256 inv = _mm256_set1_ps((float) (1.0 / sum));
    int64_t j = lo & ~(int64_t) 15;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(sc + j, round_h8(_mm256_mul_ps(_mm256_loadu_ps(sc + j), inv)));
    if (j < n) {
        float e[8] = { 0 };
        memcpy(e, sc + j, (size_t) (n - j) * sizeof(float));
        _mm256_storeu_ps(e, round_h8(_mm256_mul_ps(_mm256_loadu_ps(e), inv)));
        memcpy(sc + j, e, (size_t) (n - j) * sizeof(float));
    }
}

/* out[d] = sum over slots lo <= j < n of v_j[d] * p[j], in llama.cpp's
 * order (slot j into lane j % 64; a lane's first slot is < lo + 64). */
static void v_pass(const gs_attn_f16_scratch * S, const uint8_t * v_rows, size_t v_slot, int64_t lo, int64_t n,
                   float * out) {
    const int64_t D = S->D, n_kv = S->n_kv;
    const float * sc = S->scores;
    float * acc = S->acc;
    const int64_t np = n_kv & ~(int64_t) (CHUNK - 1);
    const int64_t n_lanes = n < np ? n : np;
    for (int64_t j = lo; j < n_lanes; j++) {
        const gs_half * v = (const gs_half *) (v_rows + j * v_slot);
        float * a = acc + (j % CHUNK) * D;
        const __m256 pj = _mm256_set1_ps(sc[j]);
        for (int64_t d = 0; d < D; d += 8) {
            const __m256 prev = j - lo < CHUNK ? _mm256_setzero_ps() : _mm256_loadu_ps(a + d);
            _mm256_storeu_ps(a + d, _mm256_fmadd_ps(load_h8(v + d), pj, prev));
        }
    }
    /* lanes no visible slot reached are zero */
    for (int64_t j = n_lanes > lo ? n_lanes : lo; j < lo + CHUNK; j++) memset(acc + (j % CHUNK) * D, 0, (size_t) D * sizeof(float));
    for (int64_t d = 0; d < D; d += 8) {
        if (!np) {
            _mm256_storeu_ps(out + d, _mm256_setzero_ps());
            continue;
        }
        __m256 s[16], t[8], u[4];
        for (int l = 0; l < 16; l++) {
            s[l] = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(acc + l * D + d), _mm256_loadu_ps(acc + (32 + l) * D + d)),
                                 _mm256_add_ps(_mm256_loadu_ps(acc + (16 + l) * D + d), _mm256_loadu_ps(acc + (48 + l) * D + d)));
        }
        for (int i = 0; i < 8; i++) t[i] = _mm256_add_ps(s[8 + i], s[i]);
        for (int i = 0; i < 4; i++) u[i] = _mm256_add_ps(t[4 + i], t[i]);
        _mm256_storeu_ps(out + d, _mm256_add_ps(_mm256_add_ps(u[0], u[2]), _mm256_add_ps(u[1], u[3])));
    }
    if (n > np) gs_attn_v_tail(v_rows, v_slot, sc, D, np, lo, n, out);
}

void gs_avx2_attend_f16(const gs_attn_f16_scratch * S, const float * q, const uint8_t * k_rows,
                        size_t k_slot, const uint8_t * v_rows, size_t v_slot, int64_t lo, int64_t n,
                        float * out) {
    for (int64_t i = 0; i < S->D; i += 8) _mm256_storeu_ps(S->q16 + i, round_h8(_mm256_loadu_ps(q + i)));
    float max = k_pass(S, k_rows, k_slot, lo, n);
    if (S->softcap > 0.0f) max = gs_attn_softcap(S->scores, lo, n, S->softcap);
    softmax(S, lo, n, max);
    v_pass(S, v_rows, v_slot, lo, n, out);
}
