/*
 * vec_avx2.h - helpers and cross-file declarations of the AVX2 kernels
 * (vec_avx2*.c). Include only from sources compiled with -mavx2 -mfma
 * -mf16c (see CMakeLists.txt).
 *
 * Without VNNI, byte dot products use vpmaddubsw (unsigned x signed bytes,
 * adjacent pairs summed into int16 with saturation) and vpmaddwd. Signed x
 * signed bytes use the sign trick |x| * (y * sign(x)), which is exact for
 * activations in -127..127 (what the quantizers produce).
 */
#ifndef GS_VEC_AVX2_H
#define GS_VEC_AVX2_H

#include "../gs_internal.h"

#include <immintrin.h>

/* vec_avx2.c: activation quantizers (bit-identical to quants_ref.c) */
void gs_avx2_quantize_q8_0(const float * x, void * y, int64_t n);
void gs_avx2_quantize_q8_1(const float * x, void * y, int64_t n);
void gs_avx2_quantize_q8_K(const float * x, void * y, int64_t n);

/* vec_avx2_float.c: F32, F16, BF16 weights (dots, batched GEMM tiles) and
 * the F16 / BF16 activation conversions (round to nearest even,
 * bit-identical to the scalar ones) */
void gs_avx2_dot_f32(int n, float * s, const void * x, const void * y);
void gs_avx2_dot_f16(int n, float * s, const void * x, const void * y);
void gs_avx2_dot_bf16(int n, float * s, const void * x, const void * y);
void gs_avx2_gemm_f32(int n, float * s, size_t bs, const void * x, size_t bx,
                      const void * y, size_t by, int nr, int nc);
void gs_avx2_gemm_f16(int n, float * s, size_t bs, const void * x, size_t bx,
                      const void * y, size_t by, int nr, int nc);
void gs_avx2_gemm_bf16(int n, float * s, size_t bs, const void * x, size_t bx,
                       const void * y, size_t by, int nr, int nc);
void gs_avx2_convert_f16(const float * x, void * y, int64_t n);
void gs_avx2_convert_bf16(const float * x, void * y, int64_t n);

/* vec_avx2_q.c: 32-element block types */
void gs_avx2_dot_q4_0(int n, float * s, const void * x, const void * y);
void gs_avx2_dot_q4_1(int n, float * s, const void * x, const void * y);
void gs_avx2_dot_q5_0(int n, float * s, const void * x, const void * y);
void gs_avx2_dot_q5_1(int n, float * s, const void * x, const void * y);
void gs_avx2_dot_q8_0(int n, float * s, const void * x, const void * y);

/* vec_avx2_k.c: 256-element super-block types with Q8_K activations */
void gs_avx2_dot_q4_K(int n, float * s, const void * x, const void * y);
void gs_avx2_tile_q4_K(int n, float * s, size_t bs, const void * x, size_t bx,
                       const void * y, size_t by, int nr, int nc);
void gs_avx2_dot_q5_K(int n, float * s, const void * x, const void * y);
void gs_avx2_dot_q6_K(int n, float * s, const void * x, const void * y);
void gs_avx2_tile_q6_K(int n, float * s, size_t bs, const void * x, size_t bx,
                       const void * y, size_t by, int nr, int nc);
/* ... and their batched order (gemm_tile, vec_generic.c) */
void gs_avx2_gemm_q4_K(int n, float * s, size_t bs, const void * x, size_t bx,
                       const void * y, size_t by, int nr, int nc);
void gs_avx2_gemm_q5_K(int n, float * s, size_t bs, const void * x, size_t bx,
                       const void * y, size_t by, int nr, int nc);
void gs_avx2_gemm_q6_K(int n, float * s, size_t bs, const void * x, size_t bx,
                       const void * y, size_t by, int nr, int nc);

static inline float gs_avx2_hsum_ps(__m256 v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

static inline int gs_avx2_hsum_epi32(__m256i v) {
    const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    const __m128i t = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1))));
}

/* unsigned bytes u times signed bytes v as 8 int32 lanes, each the sum of
 * 4 adjacent products (u * v pairs must fit int16: u <= 127 or |v| small) */
static inline __m256i gs_avx2_dot_u8s8(__m256i u, __m256i v) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, v), _mm256_set1_epi16(1));
}

/* signed bytes x times signed bytes y (y in -127..127), as int32 lanes */
static inline __m256i gs_avx2_dot_s8s8(__m256i x, __m256i y) {
    return gs_avx2_dot_u8s8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* The 32 weights of a 16-byte nibble block in order: [low, high]. */
static inline __m256i gs_avx2_nibbles(const uint8_t * q) {
    const __m128i v = _mm_loadu_si128((const __m128i *) q);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(0x0F));
}

/* Byte i = 0xFF where bit i of the little-endian 32-bit word at p is set. */
static inline __m256i gs_avx2_bits_to_bytes(const uint8_t * p) {
    uint32_t bits;
    memcpy(&bits, p, 4);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int) bits),
        _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                          0x0101010101010101LL, 0x0000000000000000LL));
    const __m256i sel = _mm256_set1_epi64x((long long) 0x8040201008040201ULL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(spread, sel), sel);
}

#endif /* GS_VEC_AVX2_H */
