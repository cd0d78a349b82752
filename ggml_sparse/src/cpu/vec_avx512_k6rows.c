/*
 * vec_avx512_k6rows.c - AVX-512 VNNI Q6_K decode kernel (one Q8_K
 * activation row) over 4 weight rows at a time, bit-identical to
 * gs_avx512_dot_q6_K (vec_avx512_k.c) row by row: the same integer lanes
 * (vec_generic.c's 8 per super-block) and, per row, the same fused
 * multiply-adds in the same order.
 *
 * Rows go in pairs: the two rows' 16 scales are widened to int16 in one
 * register (row a: words 0..15, row b: 16..31), their -32 offsets (madd of
 * bsums and scales) come out of one vpmaddwd, already in the layout of the
 * pair's folded lanes (row a: lanes 0..7, row b: 8..15), which take one
 * conversion and one fused multiply-add for both rows. The activation
 * bytes and bsums are loaded once per super-block for the 4 rows.
 */
#include "vec_avx512.h"

/* 16-dword integer accumulator of one row and super-block; scz: its 16
 * scales as int16 at words off..off+15 */
static inline __attribute__((always_inline)) __m512i
q6_row(const block_q6_K * x, const int8_t * yq, __m512i scz, int off) {
    const __m512i m0F = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    /* word lane w of the scale vector for weights 64g..64g+63 of a half: g*4 + w/8 */
    const __m512i sidx = _mm512_add_epi16(
        _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
        _mm512_set1_epi16((short) off));
    __m512i acc = _mm512_setzero_si512();
    for (int h = 0; h < 2; h++) {
        const __m512i ql = _mm512_loadu_si512(x->ql + 64 * h);
        const __m256i qh = _mm256_loadu_si256((const __m256i *) (x->qh + 32 * h));
        const __m512i qhz = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
        const __m512i lo = _mm512_ternarylogic_epi32(_mm512_and_si512(ql, m0F), _mm512_slli_epi16(qhz, 4), m30, 0xF8);
        const __m512i hi = _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m0F), qhz, m30, 0xF8);
        const __m512i slo = _mm512_permutexvar_epi16(_mm512_add_epi16(sidx, _mm512_set1_epi16((short) (8 * h))), scz);
        const __m512i shi = _mm512_permutexvar_epi16(_mm512_add_epi16(sidx, _mm512_set1_epi16((short) (8 * h + 4))), scz);
        acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(lo, _mm512_loadu_si512(yq + 128 * h)), slo);
        acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(hi, _mm512_loadu_si512(yq + 128 * h + 64)), shi);
    }
    return acc;
}

static void dot_q6_K_4rows(int n, float * s, const uint8_t * x, size_t bx, const block_q8_K * y) {
    __m512 facc[2] = { _mm512_setzero_ps(), _mm512_setzero_ps() };   /* rows (0, 1), (2, 3) */
    for (int b = 0; b < n / QK_K; b++) {
        const __m512i bs = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *) y[b].bsums));
        for (int r = 4; r < 8; r++) {   /* the next row group's block, into L2 */
            const char * pf = (const char *) ((const block_q6_K *) (x + (size_t) r * bx) + b);
            for (int o = 0; o < (int) sizeof(block_q6_K); o += 64) _mm_prefetch(pf + o, _MM_HINT_T1);
        }
        for (int p = 0; p < 2; p++) {
            const block_q6_K * xa = (const block_q6_K *) (x + (size_t) (2 * p) * bx) + b;
            const block_q6_K * xb = (const block_q6_K *) (x + (size_t) (2 * p + 1) * bx) + b;
            const __m256i sc8 = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *) xa->scales)),
                                                        _mm_loadu_si128((const __m128i *) xb->scales), 1);
            const __m512i sc16 = _mm512_cvtepi8_epi16(sc8);
            const __m512i a = q6_row(xa, y[b].qs, sc16, 0), c = q6_row(xb, y[b].qs, sc16, 16);
            /* lane l of each row: dword l + dword l + 8, less 32 (sc_2l bsums_2l + sc_2l+1 bsums_2l+1) */
            __m512i l = _mm512_add_epi32(_mm512_shuffle_i64x2(a, c, _MM_SHUFFLE(1, 0, 1, 0)),
                                         _mm512_shuffle_i64x2(a, c, _MM_SHUFFLE(3, 2, 3, 2)));
            l = _mm512_sub_epi32(l, _mm512_slli_epi32(_mm512_madd_epi16(bs, sc16), 5));
            const __m512 d = _mm512_insertf32x8(_mm512_set1_ps(y[b].d * _cvtsh_ss(xa->d)),
                                                _mm256_set1_ps(y[b].d * _cvtsh_ss(xb->d)), 1);
            facc[p] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(l), facc[p]);
        }
    }
    for (int p = 0; p < 2; p++) {
        s[2 * p] = gs256_hsum(_mm512_castps512_ps256(facc[p]));
        s[2 * p + 1] = gs256_hsum(_mm512_extractf32x8_ps(facc[p], 1));
    }
}

void gs_avx512_dot_q6_K_rows(int n, float * s, const void * vx, size_t bx, const void * vy, int nr) {
    const uint8_t * x = vx;
    int r = 0;
    for (; r + 4 <= nr; r += 4) dot_q6_K_4rows(n, s + r, x + (size_t) r * bx, bx, vy);
    for (; r < nr; r++) gs_avx512_dot_q6_K(n, s + r, x + (size_t) r * bx, vy);
}
