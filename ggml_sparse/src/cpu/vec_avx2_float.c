/*
 * vec_avx2_float.c - AVX2 dots of the float weight types F32, F16, BF16
 * (each type is its own vec_dot_type) and the F16 / BF16 activation
 * conversions, and their batched GEMM tiles (gemm_tile). Results are
 * bit-identical to vec_generic.c: its 16-lane accumulators are pairs of
 * 8-lane registers here (lo = lanes 0..7), and the AVX-512 BF16 pair dot is
 * emulated.
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

/* The odd and even elements of 16 bf16 (8 pairs) as floats, subnormals zeroed */
typedef struct {
    __m256 odd, even;
} bf16_pairs;

static inline bf16_pairs split_pairs(__m256i v) {
    const bf16_pairs p = { zero_subnormal_inputs(_mm256_and_si256(v, _mm256_set1_epi32((int) 0xFFFF0000u))),
                           zero_subnormal_inputs(_mm256_slli_epi32(v, 16)) };
    return p;
}

static inline __m256 bf16_pair_dot(__m256 acc, bf16_pairs x, bf16_pairs y) {
    acc = flush_subnormal(_mm256_add_ps(acc, _mm256_mul_ps(x.odd, y.odd)));
    return flush_subnormal(_mm256_add_ps(acc, _mm256_mul_ps(x.even, y.even)));
}

#define LOAD_PAIRS(p) split_pairs(_mm256_loadu_si256((const __m256i *) (p)))

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

/* ---- batched order (gemm_tile, see matmul.c) -------------------------------
 * One 16-lane accumulator per (row, column) (a lo/hi register pair here),
 * as llama.cpp's tinyBLAS; 2 weight rows x 2 activation rows per
 * micro-kernel. n is a multiple of 16 (BF16: 32). */
#define GT 2

/* acc[r][c][h] += step of 16 elements at i (F32 / F16) */
#define GEMM_STEP_FMA(LOAD)                                                                    \
    for (int h = 0; h < 2; h++) {                                                              \
        const __m256 x0 = LOAD(xr[0] + i + 8 * h), x1 = LOAD(xr[1] + i + 8 * h);               \
        const __m256 y0 = LOAD(yc[0] + i + 8 * h), y1 = LOAD(yc[1] + i + 8 * h);               \
        acc[0][0][h] = _mm256_fmadd_ps(x0, y0, acc[0][0][h]);                                  \
        acc[0][1][h] = _mm256_fmadd_ps(x0, y1, acc[0][1][h]);                                  \
        acc[1][0][h] = _mm256_fmadd_ps(x1, y0, acc[1][0][h]);                                  \
        acc[1][1][h] = _mm256_fmadd_ps(x1, y1, acc[1][1][h]);                                  \
    }

/* acc[r][c][h] += step of 32 elements at i (BF16 pairs) */
#define GEMM_STEP_BF16(LOAD)                                                                   \
    for (int h = 0; h < 2; h++) {                                                              \
        const bf16_pairs y0 = LOAD(yc[0] + i + 16 * h), y1 = LOAD(yc[1] + i + 16 * h);         \
        for (int r = 0; r < GT; r++) {                                                         \
            const bf16_pairs xv = LOAD(xr[r] + i + 16 * h);                                    \
            acc[r][0][h] = bf16_pair_dot(acc[r][0][h], xv, y0);                                \
            acc[r][1][h] = bf16_pair_dot(acc[r][1][h], xv, y1);                                \
        }                                                                                      \
    }

#define GEMM_TILE(name, T, STEP, STEP_OP, LOAD)                                                \
void gs_avx2_gemm_##name(int n, float * s, size_t bs, const void * vx, size_t bx,              \
                         const void * vy, size_t by, int nr, int nc) {                         \
    const uint8_t * x = vx, * y = vy;                                                          \
    for (int r0 = 0; r0 < nr; r0 += GT) {                                                      \
        const int rr = nr - r0 < GT ? nr - r0 : GT;                                            \
        const T * xr[GT];                                                                      \
        for (int r = 0; r < GT; r++) xr[r] = (const T *) (x + (size_t) (r0 + (r < rr ? r : rr - 1)) * bx); \
        for (int c0 = 0; c0 < nc; c0 += GT) {                                                  \
            const int cc = nc - c0 < GT ? nc - c0 : GT;                                        \
            const T * yc[GT];                                                                  \
            for (int c = 0; c < GT; c++) yc[c] = (const T *) (y + (size_t) (c0 + (c < cc ? c : cc - 1)) * by); \
            __m256 acc[GT][GT][2];                                                             \
            for (int r = 0; r < GT; r++)                                                       \
                for (int c = 0; c < GT; c++) acc[r][c][0] = acc[r][c][1] = _mm256_setzero_ps(); \
            for (int i = 0; i < n; i += (STEP)) { STEP_OP(LOAD) }                              \
            for (int c = 0; c < cc; c++) {                                                     \
                for (int r = 0; r < rr; r++) s[(size_t) (c0 + c) * bs + r0 + r] = sum16_ps(acc[r][c][0], acc[r][c][1]); \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}

GEMM_TILE(f32, float, 16, GEMM_STEP_FMA, LOAD_F32)
GEMM_TILE(f16, gs_half, 16, GEMM_STEP_FMA, LOAD_F16)
GEMM_TILE(bf16, gs_bf16, 32, GEMM_STEP_BF16, LOAD_PAIRS)

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
