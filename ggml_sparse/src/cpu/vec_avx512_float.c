/*
 * vec_avx512_float.c - AVX-512 dots and batched GEMM tiles of the float
 * weight types F32, F16, BF16 (activations F32, F16, BF16: each type is its
 * own vec_dot_type). Results are bit-identical to vec_generic.c, whose
 * orders of float operations (llama.cpp's) they follow: dots of F32 in
 * four 16-lane accumulators over steps of 64 elements, of BF16 with the
 * AVX-512 BF16 pair dot in two accumulators; batched products (gemm_tile)
 * in one accumulator per output. The F16 dot is the AVX2 one (faster: two
 * 256-bit half-to-float conversions per FMA outrun 512-bit ones here). The
 * BF16 kernels need AVX512_BF16; dispatch.c uses the AVX2 ones on CPUs
 * without it.
 */
#include "vec_avx512.h"
#include "vec_float.h"

/* gs_sum16 of a register */
static inline float sum16_ps(__m512 v) {
    const __m256 h = _mm256_add_ps(_mm512_extractf32x8_ps(v, 1), _mm512_castps512_ps256(v));
    const __m128 q = _mm_add_ps(_mm256_extractf128_ps(h, 1), _mm256_castps256_ps128(h));
    const __m128 r = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)));
}

#define LOAD_F32(p) _mm512_loadu_ps(p)
#define LOAD_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (p)))
#define LOAD_BF16(p) _mm512_loadu_si512(p)
#define BF16_DOT(acc, a, b) _mm512_dpbf16_ps((acc), (__m512bh) (a), (__m512bh) (b))

/* F32: lanes (a0 + a2) + (a1 + a3) of elements [0, np), then the tail */
void gs_avx512_dot_f32(int n, float * s, const void * vx, const void * vy) {
    const float * x = vx, * y = vy;
    const int np = n & ~63;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (int i = 0; i < np; i += 64) {
        a0 = _mm512_fmadd_ps(LOAD_F32(x + i), LOAD_F32(y + i), a0);
        a1 = _mm512_fmadd_ps(LOAD_F32(x + i + 16), LOAD_F32(y + i + 16), a1);
        a2 = _mm512_fmadd_ps(LOAD_F32(x + i + 32), LOAD_F32(y + i + 32), a2);
        a3 = _mm512_fmadd_ps(LOAD_F32(x + i + 48), LOAD_F32(y + i + 48), a3);
    }
    const __m512 lanes = _mm512_add_ps(_mm512_add_ps(a0, a2), _mm512_add_ps(a1, a3));
    *s = gs_f32_tail(x, y, np, n, sum16_ps(lanes));
}

__attribute__((target("avx512bf16")))
void gs_avx512_dot_bf16(int n, float * s, const void * vx, const void * vy) {
    const gs_bf16 * x = vx, * y = vy;
    const int np = n & ~63;
    __m512 c0 = _mm512_setzero_ps(), c1 = _mm512_setzero_ps();
    for (int i = 0; i < np; i += 64) {
        c0 = BF16_DOT(c0, LOAD_BF16(x + i), LOAD_BF16(y + i));
        c1 = BF16_DOT(c1, LOAD_BF16(x + i + 32), LOAD_BF16(y + i + 32));
    }
    *s = gs_bf16_tail(x, y, np, n, (double) sum16_ps(c0) + (double) sum16_ps(c1));
}

/* ---- batched order (gemm_tile, see matmul.c) -------------------------------
 * One 16-lane accumulator per (row, column), as llama.cpp's tinyBLAS: 4
 * weight rows x 4 activation rows per micro-kernel, 16 accumulators in
 * registers; each step (16 elements; BF16: 32) loads 4 + 4 registers for
 * 16 fused multiply-adds (BF16 pair dots). n is a multiple of the step. */
#define TILE_R 4
#define TILE_C 4

/* 16 named accumulators a<r><c> (GCC keeps an array of them in memory) */
#define ACC_ROW(r, X) X(r, 0) X(r, 1) X(r, 2) X(r, 3)
#define ACC_ALL(X) ACC_ROW(0, X) ACC_ROW(1, X) ACC_ROW(2, X) ACC_ROW(3, X)
#define ACC_DECL(r, c) __m512 a##r##c = _mm512_setzero_ps();
#define ACC_FMA(r, c) a##r##c = _mm512_fmadd_ps(x##r, y##c, a##r##c);
#define ACC_BF16(r, c) a##r##c = BF16_DOT(a##r##c, x##r, y##c);
#define ACC_SUM(r, c) res[r][c] = sum16_ps(a##r##c);

/* res[r][c] = batched dot of rows xr[r], yc[c]; VT: register type of LOAD,
 * STEP: elements per load, OP: the accumulation */
#define GEMM_MICRO(name, T, VT, LOAD, STEP, OP, ATTR)                                          \
ATTR static inline __attribute__((always_inline)) void                                         \
micro_##name(int n, const T * const * xr, const T * const * yc, float res[TILE_R][TILE_C]) {   \
    ACC_ALL(ACC_DECL)                                                                          \
    for (int i = 0; i < n; i += (STEP)) {                                                      \
        const VT x0 = LOAD(xr[0] + i), x1 = LOAD(xr[1] + i), x2 = LOAD(xr[2] + i), x3 = LOAD(xr[3] + i); \
        const VT y0 = LOAD(yc[0] + i), y1 = LOAD(yc[1] + i), y2 = LOAD(yc[2] + i), y3 = LOAD(yc[3] + i); \
        ACC_ALL(OP)                                                                            \
    }                                                                                          \
    ACC_ALL(ACC_SUM)                                                                           \
}                                                                                              \
ATTR void gs_avx512_gemm_##name(int n, float * s, size_t bs, const void * vx, size_t bx,       \
                                const void * vy, size_t by, int nr, int nc) {                  \
    const uint8_t * x = vx, * y = vy;                                                          \
    float res[TILE_R][TILE_C];                                                                 \
    for (int r0 = 0; r0 < nr; r0 += TILE_R) {                                                  \
        const int rr = nr - r0 < TILE_R ? nr - r0 : TILE_R;                                    \
        const T * xr[TILE_R];                                                                  \
        for (int r = 0; r < TILE_R; r++) xr[r] = (const T *) (x + (size_t) (r0 + (r < rr ? r : rr - 1)) * bx); \
        for (int c0 = 0; c0 < nc; c0 += TILE_C) {                                              \
            const int cc = nc - c0 < TILE_C ? nc - c0 : TILE_C;                                \
            const T * yc[TILE_C];                                                              \
            for (int c = 0; c < TILE_C; c++) yc[c] = (const T *) (y + (size_t) (c0 + (c < cc ? c : cc - 1)) * by); \
            micro_##name(n, xr, yc, res);                                                      \
            for (int c = 0; c < cc; c++) {                                                     \
                for (int r = 0; r < rr; r++) s[(size_t) (c0 + c) * bs + r0 + r] = res[r][c];   \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}

GEMM_MICRO(f32, float, __m512, LOAD_F32, 16, ACC_FMA, )
GEMM_MICRO(f16, gs_half, __m512, LOAD_F16, 16, ACC_FMA, )
GEMM_MICRO(bf16, gs_bf16, __m512i, LOAD_BF16, 32, ACC_BF16, __attribute__((target("avx512bf16"))))
