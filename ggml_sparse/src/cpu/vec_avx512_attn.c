/*
 * vec_avx512_attn.c - attention of one query head over F16 caches with
 * AVX-512, bit-identical to the scalar kernel of ops_attention_f16.c (whose
 * header states llama.cpp's order of operations). D % 16 == 0.
 *
 * K pass: a slot's 64 dot-product lanes are 4 zmm registers (lane a of a
 * chunk is element a), folded to 16 lane sums as (a0 + a2) + (a1 + a3).
 * The 16-lane tree (8 + 8, 4 + 4, (0 + 2) + (1 + 3)) of 16 slots is done
 * at once by a shuffle-and-add network: each level pairs two registers and
 * adds the halves the tree adds, so every sum is the reference's. V pass:
 * slot j adds its row times p[j] into accumulator row j % 64 (fused
 * multiply-add, 16 elements of d at a time), and the 64 rows are folded
 * per d with the same tree, vertically across registers.
 *
 * gs_avx512_attend_f16_batch is the prompt-batch order (one set of 16
 * lanes, element i to lane i % 16): a slot's dot is one register folded by
 * the same tree, and the V pass keeps 16 accumulator rows (slot j into row
 * j % 16) folded by the 16-lane tree per d.
 */
#include "vec_avx512.h"

#include <math.h>

#include "attention_f16.h"

#define CHUNK GS_ATTN_CHUNK

static inline __m512 load_h16(const gs_half * h) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) h));
}

/* Round to F16 (nearest even) and back. */
static inline __m512 round_h16(__m512 x) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* The 16 lane sums of one slot's dot over np elements (np % 64 == 0). */
static inline __m512 k_lanes(const gs_half * k, const float * q, int64_t np) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < np; i += CHUNK) {
        a0 = _mm512_fmadd_ps(load_h16(k + i), _mm512_loadu_ps(q + i), a0);
        a1 = _mm512_fmadd_ps(load_h16(k + i + 16), _mm512_loadu_ps(q + i + 16), a1);
        a2 = _mm512_fmadd_ps(load_h16(k + i + 32), _mm512_loadu_ps(q + i + 32), a2);
        a3 = _mm512_fmadd_ps(load_h16(k + i + 48), _mm512_loadu_ps(q + i + 48), a3);
    }
    return _mm512_add_ps(_mm512_add_ps(a0, a2), _mm512_add_ps(a1, a3));
}

/* Tree sums of 16 registers of 16 lane sums (one register per slot), as one
 * register holding slot r's sum in element r. */
static inline __m512 tree16_x16(const __m512 * s) {
    __m512 l1[8], l2[4], l3[2];
    for (int i = 0; i < 8; i++) {     /* t[i] = s[i] + s[8 + i]: slots 2i, 2i+1 */
        l1[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0x44),
                              _mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0xEE));
    }
    for (int i = 0; i < 4; i++) {     /* u[i] = t[i] + t[4 + i]: 128-bit lane k = slot 4i+k */
        l2[i] = _mm512_add_ps(_mm512_shuffle_f32x4(l1[2 * i], l1[2 * i + 1], 0x88),
                              _mm512_shuffle_f32x4(l1[2 * i], l1[2 * i + 1], 0xDD));
    }
    for (int i = 0; i < 2; i++) {     /* u0 + u2, u1 + u3: lane k = slots 8i+k, 8i+4+k */
        l3[i] = _mm512_add_ps(_mm512_shuffle_ps(l2[2 * i], l2[2 * i + 1], 0x44),
                              _mm512_shuffle_ps(l2[2 * i], l2[2 * i + 1], 0xEE));
    }
    /* (u0 + u2) + (u1 + u3): element 4k + j holds slot k + 4j */
    const __m512 f = _mm512_add_ps(_mm512_shuffle_ps(l3[0], l3[1], 0x88),
                                   _mm512_shuffle_ps(l3[0], l3[1], 0xDD));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(idx, f);
}

/* Tree sum of the 16 elements of one register. */
static inline float tree16_h(__m512 s) {
    const __m256 t = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
    const __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    const __m128 v = _mm_add_ps(u, _mm_movehl_ps(u, u));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
}

/* gs_expf_compat (vec_math.h) on 16 floats, operation for operation;
 * scalef rounds p * 2^n once, as ldexpf does. */
static inline __m512 exp16(__m512 x) {
    const __m512 shift = _mm512_set1_ps(0x1.8p23f);
    const __m512 z = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), shift);
    const __m512 n = _mm512_sub_ps(z, shift);
    const __m512 b = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f),
                                      _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x));
    const __m512 u = _mm512_mul_ps(b, b);
    const __m512 p = _mm512_fmadd_ps(
        _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b, _mm512_set1_ps(0x1.573e2ep-5f)), u,
                        _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b, _mm512_set1_ps(0x1.fffdb6p-2f))),
        u, _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0f)));
    const __m512 r = _mm512_scalef_ps(p, n);
    const __mmask16 big = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192.0f), _CMP_GT_OQ);
    const __mmask16 pos = _mm512_cmp_ps_mask(n, _mm512_setzero_ps(), _CMP_GT_OQ);
    const __m512 ovf = _mm512_mask_blend_ps(pos, _mm512_setzero_ps(), _mm512_set1_ps(INFINITY));
    return _mm512_mask_blend_ps(big, r, ovf);
}

static inline __mmask16 first_lanes(int64_t m) {
    return m >= 16 ? (__mmask16) 0xFFFF : (__mmask16) ((1u << m) - 1);
}

/* Lanes of the 16-slot group at j0 that hold visible slots (lo <= j < n). */
static inline __mmask16 visible_lanes(int64_t j0, int64_t lo, int64_t n) {
    const __mmask16 below = lo > j0 ? first_lanes(lo - j0) : 0;
    return (__mmask16) (first_lanes(n - j0) & ~below);
}

/* scores[j] = scale * (k_j . q16) for lo <= j < n; returns their maximum. */
static float k_pass(const gs_attn_f16_scratch * S, const uint8_t * k_rows, size_t k_slot, int64_t lo, int64_t n) {
    const int64_t D = S->D, np = D & ~(int64_t) (CHUNK - 1);
    const __m512 scale = _mm512_set1_ps(S->scale);
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t j0 = lo & ~(int64_t) 15; j0 < n; j0 += 16) {
        const int64_t m = n - j0 < 16 ? n - j0 : 16;
        __m512 s[16];
        for (int r = 0; r < 16; r++) {
            s[r] = r < m && j0 + r >= lo ? k_lanes((const gs_half *) (k_rows + (j0 + r) * k_slot), S->q16, np)
                                         : _mm512_setzero_ps();
        }
        __m512 dots = tree16_x16(s);
        if (np < D) {  /* elements past the last chunk, added in double */
            float f[16];
            _mm512_storeu_ps(f, dots);
            for (int r = j0 >= lo ? 0 : (int) (lo - j0); r < m; r++) {
                const gs_half * k = (const gs_half *) (k_rows + (j0 + r) * k_slot);
                double sum = np ? (double) f[r] : 0.0;
                for (int64_t i = np; i < D; i++) sum += (double) (GS_H2F(k[i]) * S->q16[i]);
                f[r] = (float) sum;
            }
            dots = _mm512_loadu_ps(f);
        }
        const __mmask16 mk = visible_lanes(j0, lo, n);
        const __m512 sc = _mm512_mul_ps(dots, scale);
        _mm512_mask_storeu_ps(S->scores + j0, mk, sc);
        vmax = _mm512_mask_max_ps(vmax, mk, vmax, sc);
    }
    return _mm512_reduce_max_ps(vmax);
}

/* scores[j] = f16(exp(scores[j] - max) / sum) for lo <= j < n (and 0 for
 * the masked j < lo of the first group), the sum running over n_kv slots
 * (the masked ones 0) in 16-slot trees added in double. */
static void softmax(const gs_attn_f16_scratch * S, int64_t lo, int64_t n, float max) {
    float * sc = S->scores;
    const __m512 vmax = _mm512_set1_ps(max);
    double sum = 0.0;
    const int64_t g0 = lo & ~(int64_t) 15;
    for (int64_t j0 = g0; j0 < n; j0 += 16) {
        const int64_t m = n - j0 < 16 ? n - j0 : 16;
        const __mmask16 mk = visible_lanes(j0, lo, n);
        const __m512 e = _mm512_maskz_mov_ps(mk, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, sc + j0), vmax)));
        _mm512_mask_storeu_ps(sc + j0, first_lanes(m), e);
        if (j0 + 16 <= S->n_kv) {
            sum += (double) tree16_h(e);
        } else {   /* the last slots when n_kv is not a multiple of 16 */
            for (int64_t j = j0; j < j0 + m; j++) sum += (double) sc[j];
        }
    }
    const __m512 inv = _mm512_set1_ps((float) (1.0 / sum));
    for (int64_t j0 = g0; j0 < n; j0 += 16) {
        const __mmask16 mk = first_lanes(n - j0);
        _mm512_mask_storeu_ps(sc + j0, mk, round_h16(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, sc + j0), inv)));
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
        const __m512 pj = _mm512_set1_ps(sc[j]);
        for (int64_t d = 0; d < D; d += 16) {
            const __m512 prev = j - lo < CHUNK ? _mm512_setzero_ps() : _mm512_loadu_ps(a + d);
            _mm512_storeu_ps(a + d, _mm512_fmadd_ps(load_h16(v + d), pj, prev));
        }
    }
    /* lanes no visible slot reached are zero */
    for (int64_t j = n_lanes > lo ? n_lanes : lo; j < lo + CHUNK; j++) memset(acc + (j % CHUNK) * D, 0, (size_t) D * sizeof(float));
    for (int64_t d = 0; d < D; d += 16) {
        if (!np) {
            _mm512_storeu_ps(out + d, _mm512_setzero_ps());
            continue;
        }
        __m512 s[16], t[8], u[4];
        for (int l = 0; l < 16; l++) {
            s[l] = _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(acc + l * D + d), _mm512_loadu_ps(acc + (32 + l) * D + d)),
                                 _mm512_add_ps(_mm512_loadu_ps(acc + (16 + l) * D + d), _mm512_loadu_ps(acc + (48 + l) * D + d)));
        }
        for (int i = 0; i < 8; i++) t[i] = _mm512_add_ps(s[8 + i], s[i]);
        for (int i = 0; i < 4; i++) u[i] = _mm512_add_ps(t[4 + i], t[i]);
        _mm512_storeu_ps(out + d, _mm512_add_ps(_mm512_add_ps(u[0], u[2]), _mm512_add_ps(u[1], u[3])));
    }
    if (n > np) gs_attn_v_tail(v_rows, v_slot, sc, D, np, lo, n, out);
}

void gs_avx512_attend_f16(const gs_attn_f16_scratch * S, const float * q, const uint8_t * k_rows,
                          size_t k_slot, const uint8_t * v_rows, size_t v_slot, int64_t lo, int64_t n,
                          float * out) {
    for (int64_t i = 0; i < S->D; i += 16) _mm512_storeu_ps(S->q16 + i, round_h16(_mm512_loadu_ps(q + i)));
    float max = k_pass(S, k_rows, k_slot, lo, n);
    if (S->softcap > 0.0f) max = gs_attn_softcap(S->scores, lo, n, S->softcap);
    softmax(S, lo, n, max);
    v_pass(S, v_rows, v_slot, lo, n, out);
}

/* The batch order's K pass: each slot's dot is one 16-lane register
 * (element i to lane i % 16, D % 16 == 0), tree-summed 16 slots at once. */
static float k_pass_batch(const gs_attn_f16_scratch * S, const uint8_t * k_rows, size_t k_slot, int64_t lo,
                          int64_t n) {
    const int64_t D = S->D;
    const __m512 scale = _mm512_set1_ps(S->scale);
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t j0 = lo & ~(int64_t) 15; j0 < n; j0 += 16) {
        const int64_t m = n - j0 < 16 ? n - j0 : 16;
        __m512 s[16];
        for (int r = 0; r < 16; r++) {
            __m512 a = _mm512_setzero_ps();
            if (r < m && j0 + r >= lo) {
                const gs_half * k = (const gs_half *) (k_rows + (j0 + r) * k_slot);
                for (int64_t i = 0; i < D; i += 16) a = _mm512_fmadd_ps(load_h16(k + i), _mm512_loadu_ps(S->q16 + i), a);
            }
            s[r] = a;
        }
        const __mmask16 mk = visible_lanes(j0, lo, n);
        const __m512 sc = _mm512_mul_ps(tree16_x16(s), scale);
        _mm512_mask_storeu_ps(S->scores + j0, mk, sc);
        vmax = _mm512_mask_max_ps(vmax, mk, vmax, sc);
    }
    return _mm512_reduce_max_ps(vmax);
}

/* The batch order's V pass: slot j adds v_j * p[j] into accumulator row
 * j % 16; out[d] is the 16-lane tree of those rows. */
static void v_pass_batch(const gs_attn_f16_scratch * S, const uint8_t * v_rows, size_t v_slot, int64_t lo,
                         int64_t n, float * out) {
    const int64_t D = S->D;
    const float * sc = S->scores;
    float * acc = S->acc;
    for (int64_t j = lo; j < n; j++) {
        const gs_half * v = (const gs_half *) (v_rows + j * v_slot);
        float * a = acc + (j % 16) * D;
        const __m512 pj = _mm512_set1_ps(sc[j]);
        for (int64_t d = 0; d < D; d += 16) {
            const __m512 prev = j - lo < 16 ? _mm512_setzero_ps() : _mm512_loadu_ps(a + d);
            _mm512_storeu_ps(a + d, _mm512_fmadd_ps(load_h16(v + d), pj, prev));
        }
    }
    for (int64_t j = n > lo ? n : lo; j < lo + 16; j++) memset(acc + (j % 16) * D, 0, (size_t) D * sizeof(float));
    for (int64_t d = 0; d < D; d += 16) {
        __m512 t[8], u[4];
        for (int i = 0; i < 8; i++) t[i] = _mm512_add_ps(_mm512_loadu_ps(acc + (8 + i) * D + d), _mm512_loadu_ps(acc + i * D + d));
        for (int i = 0; i < 4; i++) u[i] = _mm512_add_ps(t[4 + i], t[i]);
        _mm512_storeu_ps(out + d, _mm512_add_ps(_mm512_add_ps(u[0], u[2]), _mm512_add_ps(u[1], u[3])));
    }
}

void gs_avx512_attend_f16_batch(const gs_attn_f16_scratch * S, const float * q, const uint8_t * k_rows,
                                size_t k_slot, const uint8_t * v_rows, size_t v_slot, int64_t lo, int64_t n,
                                float * out) {
    for (int64_t i = 0; i < S->D; i += 16) _mm512_storeu_ps(S->q16 + i, round_h16(_mm512_loadu_ps(q + i)));
    float max = k_pass_batch(S, k_rows, k_slot, lo, n);
    if (S->softcap > 0.0f) max = gs_attn_softcap(S->scores, lo, n, S->softcap);
    softmax(S, lo, n, max);
    v_pass_batch(S, v_rows, v_slot, lo, n, out);
}
