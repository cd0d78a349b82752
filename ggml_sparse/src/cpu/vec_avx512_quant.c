/*
 * vec_avx512_quant.c - AVX-512 activation quantizers: F32 rows -> Q8_0,
 * Q8_1, Q8_K blocks, bit-identical to the reference quantizers
 * (gs_quantize_row_q8_0_act, _q8_1_ref, _q8_K_ref): same scale formulas,
 * same float products, same rounding (to nearest even).
 */
#include "vec_avx512.h"

/* The int8 value C's (int8_t) cast gives each int32 lane (its low byte):
 * the identity on -128..127; out-of-range conversions (cvt's INT_MIN, from
 * an infinite 127/amax in the reference for subnormal blocks) become 0 there. */
static inline __m512i wrap_int8(__m512i v) {
    return _mm512_srai_epi32(_mm512_slli_epi32(v, 24), 24);
}

static inline gs_half to_half(float f) {
    return (gs_half) _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

/* Quantize 32 floats as llama.cpp does at run time (Q8_0 and Q8_1
 * activations): q = nearbyint(x * 127/amax), ties to even. Writes the int8
 * values to qs, their sum to *sum; returns amax / 127. */
static inline float quantize_32(const float * x, int8_t * qs, int * sum) {
    const __m512 v0 = _mm512_loadu_ps(x);
    const __m512 v1 = _mm512_loadu_ps(x + 16);
    /* max(a, b) returns b when a is NaN: NaNs are skipped, as fmaxf does */
    const __m512 m1 = _mm512_max_ps(_mm512_abs_ps(v1), _mm512_setzero_ps());
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), m1));
    const __m512 id = _mm512_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
    const __m512i q0 = wrap_int8(_mm512_cvt_roundps_epi32(_mm512_mul_ps(v0, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m512i q1 = wrap_int8(_mm512_cvt_roundps_epi32(_mm512_mul_ps(v1, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm_storeu_si128((__m128i *) qs, _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128((__m128i *) (qs + 16), _mm512_cvtepi32_epi8(q1));
    *sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    return amax / 127.0f;
}

void gs_avx512_quantize_q8_0(const float * x, void * vy, int64_t n) {
    block_q8_0 * y = vy;
    int sum;
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        y[b].d = to_half(quantize_32(x, y[b].qs, &sum));
    }
}

/* Q8_1 stores d and s = d * sum(q) as halves */
void gs_avx512_quantize_q8_1(const float * x, void * vy, int64_t n) {
    block_q8_1 * y = vy;
    int sum;
    for (int64_t b = 0; b < n / QK8_1; b++, x += QK8_1) {
        const float d = quantize_32(x, y[b].qs, &sum);
        y[b].d = to_half(d);
        y[b].s = to_half(d * (float) sum);
    }
}

void gs_avx512_quantize_q8_K(const float * x, void * vy, int64_t n) {
    block_q8_K * y = vy;
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        __m512 m = _mm512_setzero_ps();
        for (int i = 0; i < QK_K; i += 16) m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i)), m);
        const float amax = _mm512_reduce_max_ps(m);
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof(y[b]));
            continue;
        }
        /* the first element of largest magnitude fixes the sign of the scale */
        float vmax = 0.0f;
        for (int i = 0; i < QK_K; i += 16) {
            const __mmask16 k = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + i)),
                                                   _mm512_set1_ps(amax), _CMP_EQ_OQ);
            if (k) {
                vmax = x[i + __builtin_ctz(k)];
                break;
            }
        }
        const float iscale = -127.0f / vmax;
        const __m512 vis = _mm512_set1_ps(iscale);
        for (int i = 0; i < QK_K; i += 16) {
            const __m512 t = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vis),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m512i q = wrap_int8(_mm512_min_epi32(_mm512_cvttps_epi32(t), _mm512_set1_epi32(127)));
            _mm_storeu_si128((__m128i *) (y[b].qs + i), _mm512_cvtepi32_epi8(q));
            y[b].bsums[i / 16] = (int16_t) _mm512_reduce_add_epi32(q);
        }
        y[b].d = 1.0f / iscale;
    }
}
