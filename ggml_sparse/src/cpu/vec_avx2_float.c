/*
 * vec_avx2_float.c - AVX2 dots of the float weight types F32, F16, BF16
 * (each type is its own vec_dot_type) and the F16 / BF16 activation
 * conversions. Results are bit-identical to vec_generic.c: its 16-lane
 * accumulators are pairs of 8-lane registers here (lo = lanes 0..7), and
 * the AVX-512 BF16 pair dot is emulated.
 */
#include "vec_avx2.h"
#include "vec_float.h"

/* gs_sum16 of the lanes lo (0..7) and hi (8..15) */
static inline float sum16_ps(__m256 lo, __m256 hi) {
    const __m256 h = _mm256_add_ps(hi, lo);
    const __m128 q = _mm_add_ps(_mm256_extractf128_ps(h, 1), _mm256_castps256_ps128(h));
    const __m128 r = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)));
}

#define LOAD_F32(p) _mm256_loadu_ps(p)
#define LOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (p)))

/* F32 / F16: accumulator j of the scalar order is the pair (aj_lo, aj_hi);
 * lanes (a0 + a2) + (a1 + a3) of elements [0, np) as lo, hi */
#define LANES_64(LOAD, np)                                                     \
    __m256 acc[4][2];                                                          \
    for (int j = 0; j < 4; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();   \
    for (int i = 0; i < (np); i += 64) {                                       \
        for (int j = 0; j < 4; j++) {                                          \
            acc[j][0] = _mm256_fmadd_ps(LOAD(x + i + 16 * j), LOAD(y + i + 16 * j), acc[j][0]);         \
            acc[j][1] = _mm256_fmadd_ps(LOAD(x + i + 16 * j + 8), LOAD(y + i + 16 * j + 8), acc[j][1]); \
        }                                                                      \
    }                                                                          \
    const __m256 lo = _mm256_add_ps(_mm256_add_ps(acc[0][0], acc[2][0]), _mm256_add_ps(acc[1][0], acc[3][0])); \
    const __m256 hi = _mm256_add_ps(_mm256_add_ps(acc[0][1], acc[2][1]), _mm256_add_ps(acc[1][1], acc[3][1]))

void gs_avx2_dot_f32(int n, float * s, const void * vx, const void * vy) {
    const float * x = vx, * y = vy;
    const int np = n & ~63;
    LANES_64(LOAD_F32, np);
    *s = gs_f32_tail(x, y, np, n, sum16_ps(lo, hi));
}

void gs_avx2_dot_f16(int n, float * s, const void * vx, const void * vy) {
    const gs_half * x = vx, * y = vy;
    const int np = n & ~63;
    LANES_64(LOAD_F16, np);
    *s = gs_f16_tail(x, y, np, n, sum16_ps(lo, hi));
}

/* ---- BF16: the AVX-512 BF16 pair dot, emulated ----------------------------
 * Lane j of acc takes the pair (2j, 2j + 1) of 16 bf16 in xv, yv: odd
 * product added first, then the even one; subnormal inputs count as zeros
 * and subnormal sums are flushed to zero, signs kept (vec_generic.c). */
static inline __m256 sign_only(__m256 v) {
    return _mm256_and_ps(v, _mm256_set1_ps(-0.0f));
}

static inline __m256 zero_subnormal_inputs(__m256i v) {
    const __m256 f = _mm256_castsi256_ps(v);
    const __m256i exp0 = _mm256_cmpeq_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x7F800000)), _mm256_setzero_si256());
    return _mm256_blendv_ps(f, sign_only(f), _mm256_castsi256_ps(exp0));
}

static inline __m256 flush_subnormal(__m256 v) {
    const __m256 tiny = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), v), _mm256_set1_ps(0x1p-126f), _CMP_LT_OQ);
    return _mm256_blendv_ps(v, sign_only(v), tiny);
}

static inline __m256 bf16_pair_dot(__m256 acc, __m256i xv, __m256i yv) {
    const __m256i hi16 = _mm256_set1_epi32((int) 0xFFFF0000u);
    const __m256 xo = zero_subnormal_inputs(_mm256_and_si256(xv, hi16));
    const __m256 yo = zero_subnormal_inputs(_mm256_and_si256(yv, hi16));
    const __m256 xe = zero_subnormal_inputs(_mm256_slli_epi32(xv, 16));
    const __m256 ye = zero_subnormal_inputs(_mm256_slli_epi32(yv, 16));
    acc = flush_subnormal(_mm256_add_ps(acc, _mm256_mul_ps(xo, yo)));
    return flush_subnormal(_mm256_add_ps(acc, _mm256_mul_ps(xe, ye)));
}

#define LOAD_PAIRS(p) _mm256_loadu_si256((const __m256i *) (p))

void gs_avx2_dot_bf16(int n, float * s, const void * vx, const void * vy) {
    const gs_bf16 * x = vx, * y = vy;
    const int np = n & ~63;
    /* c[k][h]: lanes 8h..8h+7 of accumulator k (elements 32k + 16h ..) */
    __m256 c[2][2];
    for (int k = 0; k < 2; k++) c[k][0] = c[k][1] = _mm256_setzero_ps();
    for (int i = 0; i < np; i += 64) {
        for (int k = 0; k < 2; k++) {
            for (int h = 0; h < 2; h++) {
                const int o = i + 32 * k + 16 * h;
                c[k][h] = bf16_pair_dot(c[k][h], LOAD_PAIRS(x + o), LOAD_PAIRS(y + o));
            }
        }
    }
    *s = gs_bf16_tail(x, y, np, n, (double) sum16_ps(c[0][0], c[0][1]) + (double) sum16_ps(c[1][0], c[1][1]));
}

/* ---- activation conversions -------------------------------------------------
 * F16: F16C round to nearest even (NaNs quieted, payload kept), as the
 * scalar quantize_row_f16_act. BF16: gs_float_to_bf16 (types.c) in integer
 * arithmetic: round to nearest even, NaNs made quiet. */
void gs_avx2_convert_f16(const float * x, void * vy, int64_t n) {
    gs_half * y = vy;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm_storeu_si128((__m128i *) (y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    for (; i < n; i++) y[i] = (gs_half) _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

static inline __m256i to_bf16_bits(__m256i u) {
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)), _mm256_set1_epi32(0x7F800000));
    return _mm256_blendv_epi8(rounded, quiet, nan);
}

void gs_avx2_convert_bf16(const float * x, void * vy, int64_t n) {
    gs_bf16 * y = vy;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i a = to_bf16_bits(_mm256_loadu_si256((const __m256i *) (x + i)));
        const __m256i b = to_bf16_bits(_mm256_loadu_si256((const __m256i *) (x + i + 8)));
        const __m256i ab = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), _MM_SHUFFLE(3, 1, 2, 0));
        _mm256_storeu_si256((__m256i *) (y + i), ab);
    }
    for (; i < n; i++) y[i] = gs_float_to_bf16(x[i]);
}
