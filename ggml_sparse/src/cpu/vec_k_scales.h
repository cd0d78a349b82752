/*
 * vec_k_scales.h - helpers shared by the SIMD K-type kernels (scale
 * unpacking; an SSE2 integer sum).
 */
#ifndef GS_VEC_K_SCALES_H
#define GS_VEC_K_SCALES_H

#include <stdint.h>
#include <string.h>
#include <emmintrin.h>

/* The 6-bit scales (sc) and mins (m) of the 8 sub-blocks of a Q4_K/Q5_K
 * super-block (`scales`, 12 bytes) as bytes j = 0..7 of two uint64, the
 * same values gs_get_scale_min_k4 (quants_ref.h) returns one at a time. */
static inline void gs_unpack_scales_k4(const uint8_t * q, uint64_t * sc, uint64_t * m) {
    uint32_t u0, u1, u2;
    memcpy(&u0, q, 4);
    memcpy(&u1, q + 4, 4);
    memcpy(&u2, q + 8, 4);
    const uint32_t lo6 = 0x3F3F3F3Fu, lo4 = 0x0F0F0F0Fu, lo2 = 0x03030303u;
    *sc = (uint64_t) (u0 & lo6) | (uint64_t) ((u2 & lo4) | ((u0 >> 6) & lo2) << 4) << 32;
    *m = (uint64_t) (u1 & lo6) | (uint64_t) (((u2 >> 4) & lo4) | ((u1 >> 6) & lo2) << 4) << 32;
}

/* Sum of the 4 int32 lanes of v. */
static inline int gs_hsum4_epi32(__m128i v) {
    const __m128i t = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1))));
}

#endif /* GS_VEC_K_SCALES_H */
