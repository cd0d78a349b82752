/*
 * vec_avx2.c - the AVX2 kernel table and the activation quantizers (F32 ->
 * Q8_0, Q8_1, Q8_K, bit-identical to the reference quantizers
 * gs_quantize_row_q8_0_act, _q8_1_ref, _q8_K_ref). Compiled with
 * AVX2/FMA/F16C target flags and only called when the CPU has them (see
 * dispatch.c). Dots: vec_avx2_{float,q,k}.c.
 */
#include "vec_avx2.h"

/* ---- activation quantizers ---------------------------------------------- */
static inline __m256 abs_ps(__m256 v) {
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

static inline float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

/* The int8 value C's (int8_t) cast gives each int32 lane (its low byte):
 * the identity on -128..127; out-of-range conversions (cvtt's INT_MIN, from
 * an infinite 127/amax in the reference for subnormal blocks) become 0 there. */
static inline __m256i wrap_int8(__m256i v) {
    return _mm256_srai_epi32(_mm256_slli_epi32(v, 24), 24);
}

/* 32 int32 in -128..127 (4 registers, in order) -> 32 int8 */
static inline void store_32_int8(int8_t * dst, __m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    const __m256i q = _mm256_packs_epi16(ab, cd);  /* lane-interleaved dwords */
    _mm256_storeu_si256((__m256i *) dst, _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

/* Quantize 32 floats as llama.cpp does at run time (Q8_0 and Q8_1
 * activations): q = nearbyint(x * 127/amax), ties to even. Writes the int8
 * values to qs, their sum to *sum; returns amax / 127. */
static inline float quantize_32(const float * x, int8_t * qs, int * sum) {
    __m256 v[4];
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        m = _mm256_max_ps(abs_ps(v[i]), m);  /* skips NaNs, as fmaxf */
    }
    const float amax = hmax_ps(m);
    const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
    __m256i q[4];
    for (int i = 0; i < 4; i++) {
        const __m256 t = _mm256_round_ps(_mm256_mul_ps(v[i], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q[i] = wrap_int8(_mm256_cvttps_epi32(t));
    }
    store_32_int8(qs, q[0], q[1], q[2], q[3]);
    *sum = gs_avx2_hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    return amax / 127.0f;
}

static inline gs_half to_half(float f) {
    return (gs_half) _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

void gs_avx2_quantize_q8_0(const float * x, void * vy, int64_t n) {
    block_q8_0 * y = vy;
    int sum;
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) y[b].d = to_half(quantize_32(x, y[b].qs, &sum));
}

/* Q8_1 stores d and s = d * sum(q) as halves */
void gs_avx2_quantize_q8_1(const float * x, void * vy, int64_t n) {
    block_q8_1 * y = vy;
    int sum;
    for (int64_t b = 0; b < n / QK8_1; b++, x += QK8_1) {
        const float d = quantize_32(x, y[b].qs, &sum);
        y[b].d = to_half(d);
        y[b].s = to_half(d * (float) sum);
    }
}

void gs_avx2_quantize_q8_K(const float * x, void * vy, int64_t n) {
    block_q8_K * y = vy;
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int i = 0; i < QK_K; i += 8) m = _mm256_max_ps(abs_ps(_mm256_loadu_ps(x + i)), m);
        const float amax = hmax_ps(m);
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof(y[b]));
            continue;
        }
        /* the first element of largest magnitude fixes the sign of the scale */
        float vmax = 0.0f;
        for (int i = 0; i < QK_K; i += 8) {
            const int k = _mm256_movemask_ps(_mm256_cmp_ps(abs_ps(_mm256_loadu_ps(x + i)),
                                                           _mm256_set1_ps(amax), _CMP_EQ_OQ));
            if (k) {
                vmax = x[i + __builtin_ctz((unsigned) k)];
                break;
            }
        }
        const float iscale = -127.0f / vmax;
        for (int i = 0; i < QK_K; i += 32) {
            __m256i q[4];
            for (int j = 0; j < 4; j++) {
                const __m256 t = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), _mm256_set1_ps(iscale)),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                q[j] = wrap_int8(_mm256_min_epi32(_mm256_cvttps_epi32(t), _mm256_set1_epi32(127)));
            }
            store_32_int8(y[b].qs + i, q[0], q[1], q[2], q[3]);
            y[b].bsums[i / 16] = (int16_t) gs_avx2_hsum_epi32(_mm256_add_epi32(q[0], q[1]));
            y[b].bsums[i / 16 + 1] = (int16_t) gs_avx2_hsum_epi32(_mm256_add_epi32(q[2], q[3]));
        }
        y[b].d = 1.0f / iscale;
    }
}

/* from_float of a weight type converts activations to its vec_dot_type;
 * F32 activations need no conversion (NULL: the scalar copy is used). */
const gs_cpu_type_funcs gs_cpu_funcs_avx2[GS_TYPE_COUNT] = {
    [GS_TYPE_F32]  = { NULL, gs_avx2_dot_f32, NULL, NULL, gs_avx2_gemm_f32 },
    [GS_TYPE_F16]  = { gs_avx2_convert_f16, gs_avx2_dot_f16, NULL, NULL, gs_avx2_gemm_f16 },
    [GS_TYPE_BF16] = { gs_avx2_convert_bf16, gs_avx2_dot_bf16, NULL, NULL, gs_avx2_gemm_bf16 },
    [GS_TYPE_Q4_0] = { gs_avx2_quantize_q8_0, gs_avx2_dot_q4_0, NULL, NULL },
    [GS_TYPE_Q4_1] = { gs_avx2_quantize_q8_1, gs_avx2_dot_q4_1, NULL, NULL },
    [GS_TYPE_Q5_0] = { gs_avx2_quantize_q8_0, gs_avx2_dot_q5_0, NULL, NULL },
    [GS_TYPE_Q5_1] = { gs_avx2_quantize_q8_1, gs_avx2_dot_q5_1, NULL, NULL },
    [GS_TYPE_Q8_0] = { gs_avx2_quantize_q8_0, gs_avx2_dot_q8_0, NULL, NULL },
    [GS_TYPE_Q8_1] = { gs_avx2_quantize_q8_1, NULL, NULL, NULL },
    [GS_TYPE_Q4_K] = { gs_avx2_quantize_q8_K, gs_avx2_dot_q4_K, NULL, gs_avx2_tile_q4_K, gs_avx2_gemm_q4_K },
    [GS_TYPE_Q5_K] = { gs_avx2_quantize_q8_K, gs_avx2_dot_q5_K, NULL, NULL, gs_avx2_gemm_q5_K },
    [GS_TYPE_Q6_K] = { gs_avx2_quantize_q8_K, gs_avx2_dot_q6_K, NULL, gs_avx2_tile_q6_K, gs_avx2_gemm_q6_K },
    [GS_TYPE_Q8_K] = { gs_avx2_quantize_q8_K, NULL, NULL, NULL },
};
