/*
 * vec_avx512.c - the AVX-512 kernel table and the float-weight kernels
 * (F32, F16, BF16 weights with F32 activations: dots and GEMM tiles). Compiled with AVX-512
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

/* ---- float-weight tiles: 4 weight rows x 4 activation rows, 16 elements
 * per step into 16 accumulators, so each converted weight chunk serves 4
 * activation rows and each activation chunk 4 weight rows. One activation
 * row (decode) goes row by row through the dots (a sequential stream). */
#define TILE_R 4
#define TILE_C 4

/* 16 named accumulators a<r><c> (GCC keeps an array of them in memory) */
#define ACC_ROW(r, X) X(r, 0) X(r, 1) X(r, 2) X(r, 3)
#define ACC_ALL(X) ACC_ROW(0, X) ACC_ROW(1, X) ACC_ROW(2, X) ACC_ROW(3, X)
#define ACC_DECL(r, c) __m512 a##r##c = _mm512_setzero_ps();
#define ACC_FMA(r, c) a##r##c = _mm512_fmadd_ps(x##r, y##c, a##r##c);
#define ACC_SUM(r, c) res[r][c] = _mm512_reduce_add_ps(a##r##c);

/* one step of 16 elements (mask k) of the 4 x 4 tile */
#define FLOAT_STEP(LOAD, k)                                                                    \
    do {                                                                                       \
        const __m512 x0 = LOAD(xr[0] + i, (k)), x1 = LOAD(xr[1] + i, (k));                     \
        const __m512 x2 = LOAD(xr[2] + i, (k)), x3 = LOAD(xr[3] + i, (k));                     \
        const __m512 y0 = _mm512_maskz_loadu_ps((k), yc[0] + i), y1 = _mm512_maskz_loadu_ps((k), yc[1] + i); \
        const __m512 y2 = _mm512_maskz_loadu_ps((k), yc[2] + i), y3 = _mm512_maskz_loadu_ps((k), yc[3] + i); \
        ACC_ALL(ACC_FMA)                                                                       \
    } while (0)

#define FLOAT_MICRO(name, T, LOAD)                                                             \
static void micro_##name(int n, float * s, size_t bs, const T * const * xr, int nr,           \
                         const float * const * yc, int nc) {                                   \
    ACC_ALL(ACC_DECL)                                                                          \
    int i = 0;                                                                                 \
    for (; i + 16 <= n; i += 16) FLOAT_STEP(LOAD, 0xFFFF);                                     \
    if (i < n) FLOAT_STEP(LOAD, (__mmask16) ((1u << (n - i)) - 1));                            \
    float res[TILE_R][TILE_C];                                                                 \
    ACC_ALL(ACC_SUM)                                                                           \
    for (int c = 0; c < nc; c++)                                                               \
        for (int r = 0; r < nr; r++) s[(size_t) c * bs + r] = res[r][c];                       \
}                                                                                              \
static void tile_##name(int n, float * s, size_t bs, const void * vx, size_t bx,               \
                        const void * vy, size_t by, int nr, int nc) {                          \
    const uint8_t * x = vx, * y = vy;                                                          \
    if (nc == 1) {                                                                             \
        for (int r = 0; r < nr; r++) dot_##name(n, &s[r], x + (size_t) r * bx, y);             \
        return;                                                                                \
    }                                                                                          \
    for (int r0 = 0; r0 < nr; r0 += TILE_R) {                                                  \
        const int rr = nr - r0 < TILE_R ? nr - r0 : TILE_R;                                    \
        const T * xr[TILE_R];                                                                  \
        for (int r = 0; r < TILE_R; r++) xr[r] = (const T *) (x + (size_t) (r0 + (r < rr ? r : rr - 1)) * bx); \
        for (int c0 = 0; c0 < nc; c0 += TILE_C) {                                              \
            const int cc = nc - c0 < TILE_C ? nc - c0 : TILE_C;                                \
            const float * yc[TILE_C];                                                          \
            for (int c = 0; c < TILE_C; c++) yc[c] = (const float *) (y + (size_t) (c0 + (c < cc ? c : cc - 1)) * by); \
            micro_##name(n, s + (size_t) c0 * bs + r0, bs, xr, rr, yc, cc);                    \
        }                                                                                      \
    }                                                                                          \
}

FLOAT_MICRO(f32, float, LOAD_F32)
FLOAT_MICRO(f16, gs_half, LOAD_F16)
FLOAT_MICRO(bf16, gs_bf16, LOAD_BF16)

/* from_float of a weight type quantizes activations to its vec_dot_type;
 * F32 activations need no conversion (NULL: the scalar copy is used). */
const gs_cpu_type_funcs gs_cpu_funcs_avx512[GS_TYPE_COUNT] = {
    [GS_TYPE_F32]  = { NULL, dot_f32,  NULL, tile_f32 },
    [GS_TYPE_F16]  = { NULL, dot_f16,  NULL, tile_f16 },
    [GS_TYPE_BF16] = { NULL, dot_bf16, NULL, tile_bf16 },
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
