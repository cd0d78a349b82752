/*
 * vec_avx512.h - helpers and cross-file declarations of the AVX-512 kernels
 * (vec_avx512*.c). Include only from sources compiled with the AVX-512
 * target flags (F, BW, VL, VNNI; see CMakeLists.txt).
 *
 * Kernel signatures follow gs_vec_dot_fn / gs_from_float_fn /
 * gs_vec_dot_tile_fn (gs_internal.h). The integer dot products assume
 * activation bytes in -127..127, which is what the quantizers produce.
 */
#ifndef GS_VEC_AVX512_H
#define GS_VEC_AVX512_H

#include "../gs_internal.h"

#include <immintrin.h>

/* vec_avx512_quant.c: activation quantizers (bit-identical to quants_ref.c) */
void gs_avx512_quantize_q8_0(const float * x, void * y, int64_t n);
void gs_avx512_quantize_q8_1(const float * x, void * y, int64_t n);
void gs_avx512_quantize_q8_K(const float * x, void * y, int64_t n);

/* vec_avx512_float.c: F32, F16, BF16 weights (the BF16 kernels need
 * AVX512_BF16) */
void gs_avx512_dot_f32(int n, float * s, const void * x, const void * y);
void gs_avx512_dot_bf16(int n, float * s, const void * x, const void * y);
void gs_avx512_gemm_f32(int n, float * s, size_t bs, const void * x, size_t bx,
                        const void * y, size_t by, int nr, int nc);
void gs_avx512_gemm_f16(int n, float * s, size_t bs, const void * x, size_t bx,
                        const void * y, size_t by, int nr, int nc);
void gs_avx512_gemm_bf16(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);

/* vec_avx512_q.c: 32-element block types */
void gs_avx512_dot_q4_0(int n, float * s, const void * x, const void * y);
void gs_avx512_dot_q4_1(int n, float * s, const void * x, const void * y);
void gs_avx512_dot_q5_0(int n, float * s, const void * x, const void * y);
void gs_avx512_dot_q5_1(int n, float * s, const void * x, const void * y);
void gs_avx512_dot_q8_0(int n, float * s, const void * x, const void * y);

/* vec_avx512_k.c: 256-element super-block types with Q8_K activations */
void gs_avx512_dot_q4_K(int n, float * s, const void * x, const void * y);
void gs_avx512_dot_q5_K(int n, float * s, const void * x, const void * y);
void gs_avx512_dot_q6_K(int n, float * s, const void * x, const void * y);

/* vec_avx512_tile.c: tile kernels (gs_vec_dot_tile_fn) */
void gs_avx512_tile_q4_0(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);
void gs_avx512_tile_q4_1(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);
void gs_avx512_tile_q8_0(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);
void gs_avx512_tile_q5_0(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);
void gs_avx512_tile_q5_1(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);
/* vec_avx512_ktile.c */
void gs_avx512_tile_q4_K(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);
void gs_avx512_tile_q5_K(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);
void gs_avx512_tile_q6_K(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);
void gs_avx512_gemm_q4_K(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);
void gs_avx512_gemm_q5_K(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);
void gs_avx512_gemm_q6_K(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);

/* Horizontal sum of 8 floats as ((0+4)+(2+6)) + ((1+5)+(3+7)): the order of
 * llama.cpp's x86 kernels that vec_generic.c reproduces. */
static inline float gs256_hsum(__m256 v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

/* vec_avx512_k4rows.c: Q4_K with one activation row, 4 weight rows at a
 * time (rows bx bytes apart, outputs s[0..nr-1]): gs_avx512_dot_q4_K's
 * values, and gs_avx512_q4kx8_dot's with super-block steps (repack.h) */
void gs_avx512_dot_q4_K_rows(int n, float * s, const void * x, size_t bx, const void * y, int nr);
void gs_avx512_q4kx8_dot_rows(int n, float * s, const void * x, size_t bx, const void * y, int nr);
/* vec_avx512_k6rows.c: gs_avx512_dot_q6_K's values, 4 weight rows at a time */
void gs_avx512_dot_q6_K_rows(int n, float * s, const void * x, size_t bx, const void * y, int nr);

#endif /* GS_VEC_AVX512_H */
