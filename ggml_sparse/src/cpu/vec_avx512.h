/*
 * vec_avx512.h - helpers and cross-file declarations of the AVX-512 kernels
 * (vec_avx512*.c). Include only from sources compiled with the AVX-512
 * target flags (F, BW, VL, VNNI; see CMakeLists.txt).
 *
 * Kernel signatures follow gs_vec_dot_fn / gs_from_float_fn (gs_internal.h).
 * The integer dot products assume activation bytes in -127..127, which is
 * what the activation quantizers produce.
 */
#ifndef GS_VEC_AVX512_H
#define GS_VEC_AVX512_H

#include "../gs_internal.h"

#include <immintrin.h>

/* vec_avx512_quant.c: activation quantizers (bit-identical to quants_ref.c) */
void gs_avx512_quantize_q8_0(const float * x, void * y, int64_t n);
void gs_avx512_quantize_q8_1(const float * x, void * y, int64_t n);
void gs_avx512_quantize_q8_K(const float * x, void * y, int64_t n);

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
/* vec_avx512_ktile.c */
void gs_avx512_tile_q4_K(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);
void gs_avx512_tile_q5_K(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);
void gs_avx512_tile_q6_K(int n, float * s, size_t bs, const void * x, size_t bx,
                         const void * y, size_t by, int nr, int nc);

/* vec_avx512_gemv.c: s[r] = dot(row r, y) for nr weight rows bx bytes apart */
void gs_avx512_gemv_q4_0(int n, float * s, const void * x, size_t bx, const void * y, int nr);
void gs_avx512_gemv_q4_1(int n, float * s, const void * x, size_t bx, const void * y, int nr);
void gs_avx512_gemv_q8_0(int n, float * s, const void * x, size_t bx, const void * y, int nr);

/* 32 bytes at a in the low half, 32 bytes at b in the high half. */
static inline __m512i gs512_load_2x32(const void * a, const void * b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) a)),
                              _mm256_loadu_si256((const __m256i *) b), 1);
}

/* 16 bytes at a in the low half, 16 bytes at b in the high half. */
static inline __m256i gs256_load_2x16(const void * a, const void * b) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *) a)),
                                   _mm_loadu_si128((const __m128i *) b), 1);
}

/* The 16 nibble bytes of two 32-weight blocks (a, b) as 64 bytes 0..15 in
 * weight order: [a low nibbles, a high nibbles, b low, b high]. */
static inline __m512i gs512_nibbles_2x16(const uint8_t * a, const uint8_t * b) {
    const __m512i q = _mm512_castsi256_si512(gs256_load_2x16(a, b));
    const __m512i qq = _mm512_permutexvar_epi64(_mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0), q);
    return _mm512_and_si512(_mm512_srlv_epi64(qq, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0)),
                            _mm512_set1_epi8(0x0F));
}

/* The 32 weights of one 16-byte nibble block in order: [low, high]. */
static inline __m256i gs256_nibbles_16(const uint8_t * a) {
    const __m128i q = _mm_loadu_si128((const __m128i *) a);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
}

/* [s0 in lanes 0..7, s1 in lanes 8..15] */
static inline __m512 gs512_splat2(float s0, float s1) {
    return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(s0), _mm512_set1_ps(s1));
}

static inline float gs256_hsum(__m256 v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

#endif /* GS_VEC_AVX512_H */
