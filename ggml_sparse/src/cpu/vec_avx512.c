/*
 * vec_avx512.c - the AVX-512 kernel table and the float-weight dot products
 * (F32, F16, BF16 weights with F32 activations). Compiled with AVX-512
 * F/BW/VL/VNNI target flags and only called when the CPU has them (see
 * dispatch.c). Quantized kernels live in vec_avx512_{quant,q,k}.c.
 */
#include "vec_avx512.h"

/* The three float dots share one loop: 64 elements per step into four
 * accumulators, then a masked tail. LOAD(p, mask) yields 16 floats of x. */
#define FLOAT_DOT_BODY(LOAD)                                                   \
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();             \
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();             \
    int i = 0;                                                                 \
    for (; i + 64 <= n; i += 64) {                                             \
        acc0 = _mm512_fmadd_ps(LOAD(x + i, 0xFFFF), _mm512_loadu_ps(y + i), acc0);           \
        acc1 = _mm512_fmadd_ps(LOAD(x + i + 16, 0xFFFF), _mm512_loadu_ps(y + i + 16), acc1); \
        acc2 = _mm512_fmadd_ps(LOAD(x + i + 32, 0xFFFF), _mm512_loadu_ps(y + i + 32), acc2); \
        acc3 = _mm512_fmadd_ps(LOAD(x + i + 48, 0xFFFF), _mm512_loadu_ps(y + i + 48), acc3); \
    }                                                                          \
    for (; i < n; i += 16) {                                                   \
        const __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16) ((1u << (n - i)) - 1);        \
        acc0 = _mm512_fmadd_ps(LOAD(x + i, k), _mm512_maskz_loadu_ps(k, y + i), acc0);       \
    }                                                                          \
    *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)))

#define LOAD_F32(p, k) _mm512_maskz_loadu_ps((k), (p))
#define LOAD_F16(p, k) _mm512_cvtph_ps(_mm256_maskz_loadu_epi16((k), (p)))
#define LOAD_BF16(p, k) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16((k), (p))), 16))

static void dot_f32(int n, float * s, const void * vx, const void * vy) {
    const float * x = vx, * y = vy;
    FLOAT_DOT_BODY(LOAD_F32);
}

static void dot_f16(int n, float * s, const void * vx, const void * vy) {
    const gs_half * x = vx;
    const float * y = vy;
    FLOAT_DOT_BODY(LOAD_F16);
}

static void dot_bf16(int n, float * s, const void * vx, const void * vy) {
    const gs_bf16 * x = vx;
    const float * y = vy;
    FLOAT_DOT_BODY(LOAD_BF16);
}

/* from_float of a weight type quantizes activations to its vec_dot_type;
 * F32 activations need no conversion (NULL: the scalar copy is used). */
const gs_cpu_type_funcs gs_cpu_funcs_avx512[GS_TYPE_COUNT] = {
    [GS_TYPE_F32]  = { NULL, dot_f32,  NULL },
    [GS_TYPE_F16]  = { NULL, dot_f16,  NULL },
    [GS_TYPE_BF16] = { NULL, dot_bf16, NULL },
    [GS_TYPE_Q4_0] = { gs_avx512_quantize_q8_0, gs_avx512_dot_q4_0, NULL, gs_avx512_tile_q4_0 },
    [GS_TYPE_Q4_1] = { gs_avx512_quantize_q8_1, gs_avx512_dot_q4_1, NULL, gs_avx512_tile_q4_1 },
    [GS_TYPE_Q5_0] = { gs_avx512_quantize_q8_0, gs_avx512_dot_q5_0, NULL, gs_avx512_tile_q5_0 },
    [GS_TYPE_Q5_1] = { gs_avx512_quantize_q8_1, gs_avx512_dot_q5_1, NULL, gs_avx512_tile_q5_1 },
    [GS_TYPE_Q8_0] = { gs_avx512_quantize_q8_0, gs_avx512_dot_q8_0, NULL, gs_avx512_tile_q8_0 },
    [GS_TYPE_Q8_1] = { gs_avx512_quantize_q8_1, NULL, NULL },
    [GS_TYPE_Q4_K] = { gs_avx512_quantize_q8_K, gs_avx512_dot_q4_K, NULL, gs_avx512_tile_q4_K },
    [GS_TYPE_Q5_K] = { gs_avx512_quantize_q8_K, gs_avx512_dot_q5_K, NULL, gs_avx512_tile_q5_K },
    [GS_TYPE_Q6_K] = { gs_avx512_quantize_q8_K, gs_avx512_dot_q6_K, NULL, gs_avx512_tile_q6_K },
    [GS_TYPE_Q8_K] = { gs_avx512_quantize_q8_K, NULL, NULL },
};
