/*
 * vec_avx512_repack.c - AVX-512 VNNI kernel over repacked Q4_0 weights
 * (layout and order: repack.h), bit-identical to gs_r8_gemm_scalar.
 *
 * Per x8 block, its two 64-byte qs chunks give four registers of unsigned
 * weights (AND / shift+AND); in each, int32 lane 2r + h holds elements
 * 4h..4h+3 of an 8-element run of row r, so the matching 8 activation bytes
 * are one 64-bit broadcast. Four vpdpbusd, started from the block's offset
 * (-8 * sum of its activations) in the even lanes, leave row r's exact
 * integer dot in lanes 2r + 2r+1; adding the pair and narrowing the qwords
 * (vpmovqd) gives the 8 rows' isums for one fused multiply-add.
 * A micro-kernel takes G (1..4) groups x NC (1..4) activation rows, so
 * the weights are unpacked once per NC rows and G x NC chains interleave.
 * A GEMV (one activation row) takes its 4 groups from the 4 quarters of the
 * group range: 4 sequential streams from memory, which keep more reads in
 * flight than one (the hardware prefetcher follows each).
 */
#include "vec_avx512.h"
#include "repack.h"

/* groups g < G at x + g bx, their outputs at s + g sg */
static inline __attribute__((always_inline)) void
micro(int nb, float * s, size_t sg, size_t bs, const uint8_t * x, size_t bx, const uint8_t * y, size_t by,
      const int G, const int NC) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m256 acc[4][4];
    for (int g = 0; g < G; g++) {
        for (int c = 0; c < NC; c++) acc[g][c] = _mm256_setzero_ps();
    }
    for (int b = 0; b < nb; b++) {
        __m512i w[4][4];
        __m256 dx[4];
        for (int g = 0; g < G; g++) {
            const uint8_t * xb = x + (size_t) g * bx + (size_t) b * GS_R8_BLOCK;
            const __m512i r0 = _mm512_loadu_si512(xb + 16), r1 = _mm512_loadu_si512(xb + 80);
            w[g][0] = _mm512_and_si512(r0, m4);
            w[g][1] = _mm512_and_si512(r1, m4);
            w[g][2] = _mm512_and_si512(_mm512_srli_epi16(r0, 4), m4);
            w[g][3] = _mm512_and_si512(_mm512_srli_epi16(r1, 4), m4);
            dx[g] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) xb));
        }
        for (int c = 0; c < NC; c++) {
            const uint8_t * yc = y + (size_t) c * by;
            const uint8_t * q = yc + 32 * b;
            float dy;
            int32_t off;
            memcpy(&dy, yc + 32 * nb + 4 * b, 4);
            memcpy(&off, yc + 36 * nb + 4 * b, 4);
            int64_t y8[4];
            memcpy(y8, q, 32);
            const __m512i o = _mm512_set1_epi64((int64_t) (uint32_t) off);
            const __m256 vdy = _mm256_set1_ps(dy);
            for (int g = 0; g < G; g++) {
                __m512i t = _mm512_dpbusd_epi32(o, w[g][0], _mm512_set1_epi64(y8[0]));
                t = _mm512_dpbusd_epi32(t, w[g][1], _mm512_set1_epi64(y8[1]));
                t = _mm512_dpbusd_epi32(t, w[g][2], _mm512_set1_epi64(y8[2]));
                t = _mm512_dpbusd_epi32(t, w[g][3], _mm512_set1_epi64(y8[3]));
                const __m256i isum = _mm512_cvtepi64_epi32(_mm512_add_epi32(t, _mm512_srli_epi64(t, 32)));
                acc[g][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dx[g], vdy), acc[g][c]);
            }
        }
    }
    for (int g = 0; g < G; g++) {
        for (int c = 0; c < NC; c++) _mm256_storeu_ps(s + (size_t) c * bs + (size_t) g * sg, acc[g][c]);
    }
}

#define MICRO(G, NC) micro(nb, s + (size_t) c0 * bs + (size_t) g0 * GS_R8_ROWS, GS_R8_ROWS, bs, \
                           x + (size_t) g0 * bx, bx, y + (size_t) c0 * by, by, G, NC)

void gs_avx512_r8_gemm(int nb, float * s, size_t bs, const uint8_t * x, size_t bx,
                       const uint8_t * y, size_t by, int ng, int nc) {
    if (nc == 1) {
        const int q = ng / 4;
        for (int i = 0; i < q; i++) {
            micro(nb, s + (size_t) i * GS_R8_ROWS, (size_t) q * GS_R8_ROWS, bs, x + (size_t) i * bx,
                  (size_t) q * bx, y, by, 4, 1);
        }
        for (int g = 4 * q; g < ng; g++) {
            micro(nb, s + (size_t) g * GS_R8_ROWS, GS_R8_ROWS, bs, x + (size_t) g * bx, bx, y, by, 1, 1);
        }
        return;
    }
    for (int g0 = 0; g0 < ng; g0 += 2) {
        const int two = ng - g0 >= 2;
        for (int c0 = 0; c0 < nc; c0 += 4) {
            switch ((nc - c0 < 4 ? nc - c0 : 4) + (two ? 4 : 0)) {
                case 1: MICRO(1, 1); break;
                case 2: MICRO(1, 2); break;
                case 3: MICRO(1, 3); break;
                case 4: MICRO(1, 4); break;
                case 5: MICRO(2, 1); break;
                case 6: MICRO(2, 2); break;
                case 7: MICRO(2, 3); break;
                default: MICRO(2, 4); break;
            }
        }
    }
}
