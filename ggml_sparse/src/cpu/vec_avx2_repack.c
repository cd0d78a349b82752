/*
 * vec_avx2_repack.c - AVX2 kernel over repacked Q4_0 weights (layout and
 * order: repack.h), bit-identical to gs_r8_gemm_scalar.
 *
 * A 32-byte quarter of an x8 block's qs holds one chunk of 4 rows; its low
 * and high nibbles are unsigned weights whose int32 lane 2r' + h covers
 * elements 4h..4h+3 of an 8-element run of row r'. vpmaddubsw against the
 * broadcast 8 activation bytes (pairs of at most 2 * 15 * 127, no
 * saturation) and vpmaddwd by ones give exact int32 sums; hadd of the two
 * 4-row halves and a qword permute put the 8 rows' dots in order, the
 * block's offset (-8 * sum of its activations) is added, and one fused
 * multiply-add per block follows.
 */
#include "vec_avx2.h"
#include "repack.h"

static inline __m256i dot8(__m256i w, int64_t y8) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, _mm256_set1_epi64x(y8)), _mm256_set1_epi16(1));
}

void gs_avx2_r8_gemm(int nb, float * s, size_t bs, const uint8_t * x, size_t bx,
                     const uint8_t * y, size_t by, int ng, int nc) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int g = 0; g < ng; g++) {
        for (int c = 0; c < nc; c++) {
            const uint8_t * xg = x + (size_t) g * bx;
            const uint8_t * yc = y + (size_t) c * by;
            __m256 acc = _mm256_setzero_ps();
            for (int b = 0; b < nb; b++) {
                const uint8_t * xb = xg + (size_t) b * GS_R8_BLOCK;
                int64_t y8[4];
                memcpy(y8, yc + 32 * b, 32);
                float dy;
                int32_t off;
                memcpy(&dy, yc + 32 * nb + 4 * b, 4);
                memcpy(&off, yc + 36 * nb + 4 * b, 4);
                __m256i half[2];
                for (int h = 0; h < 2; h++) {   /* rows 4h..4h+3 */
                    const __m256i c0 = _mm256_loadu_si256((const __m256i *) (xb + 16 + 32 * h));
                    const __m256i c1 = _mm256_loadu_si256((const __m256i *) (xb + 80 + 32 * h));
                    __m256i t = dot8(_mm256_and_si256(c0, m4), y8[0]);
                    t = _mm256_add_epi32(t, dot8(_mm256_and_si256(c1, m4), y8[1]));
                    t = _mm256_add_epi32(t, dot8(_mm256_and_si256(_mm256_srli_epi16(c0, 4), m4), y8[2]));
                    half[h] = _mm256_add_epi32(t, dot8(_mm256_and_si256(_mm256_srli_epi16(c1, 4), m4), y8[3]));
                }
                /* hadd: rows [0 1 4 5 | 2 3 6 7] -> qwords reordered to rows 0..7 */
                const __m256i rows = _mm256_permute4x64_epi64(_mm256_hadd_epi32(half[0], half[1]), 0xD8);
                const __m256i isum = _mm256_add_epi32(rows, _mm256_set1_epi32(off));
                const __m256 dx = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) xb));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dx, _mm256_set1_ps(dy)), acc);
            }
            _mm256_storeu_ps(s + (size_t) c * bs + (size_t) g * GS_R8_ROWS, acc);
        }
    }
}
