/*
 * vec_avx512_sparse.c - AVX-512 VNNI dot products of up to 4 scattered
 * weight rows with one activation row (gs_sparse_dots_fn), for the rows a
 * sparse index picks. The single-row kernels (vec_avx512_q.c) run one chain
 * of fused multiply-adds; here 4 chains run side by side and share the
 * activation blocks. Each row's arithmetic is the single-row kernel's,
 * operation for operation (8 int32 lanes per block, one fused multiply-add
 * by d_x * d_y per block in block order, gs256_hsum; Q4_1/Q5_1 add the
 * m_x * s_y sum): the results are bit-identical to gs_vec_dot's.
 */
#include "sparse.h"
#include "vec_avx512_blocks.h"

#define NR 4

static inline __m256i load32(const int8_t * p) {
    return _mm256_loadu_si256((const __m256i *) p);
}

static inline __m256 fma_block(float d, __m256i dot, __m256 acc) {
    return _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(dot), acc);
}

/* Rows 0..nr-1 as NR pointers (the missing ones repeat the first; their
 * results are dropped). */
static inline void fill(const uint8_t * const * p, int nr, const uint8_t * pr[NR]) {
    for (int r = 0; r < NR; r++) pr[r] = p[r < nr ? r : 0];
}

static inline void store(float * s, int nr, const __m256 acc[NR], const float ms[NR]) {
    for (int r = 0; r < nr; r++) s[r] = ms ? gs256_hsum(acc[r]) + ms[r] : gs256_hsum(acc[r]);
}

/* Kernel bodies: dot r pairs weight row XR(r) with activation row YR (one
 * pointer for all rows, so the compiler loads it once). */

/* Q4_0, Q5_0, Q8_0 (Q8_0 activations): per block q . y - off * sum(y) with
 * the weights q made unsigned; QBODY sets q from block pointer xb. */
#define BODY_OFFSET(block_t, off_byte, QBODY, XR, YR)                                           \
    const __m256i z = _mm256_setzero_si256(), off = _mm256_set1_epi8((char) (off_byte));       \
    __m256 acc[NR];                                                                            \
    for (int r = 0; r < NR; r++) acc[r] = _mm256_setzero_ps();                                 \
    for (int b = 0; b < n / 32; b++) {                                                         \
        for (int r = 0; r < NR; r++) {                                                         \
            const block_t * xb = (const block_t *) (XR) + b;                                   \
            const block_q8_0 * yb = (const block_q8_0 *) (YR) + b;                             \
            const __m256i yq = load32(yb->qs);                                                 \
            QBODY                                                                              \
            const __m256i dot = _mm256_sub_epi32(_mm256_dpbusd_epi32(z, q, yq), _mm256_dpbusd_epi32(z, off, yq)); \
            acc[r] = fma_block(_cvtsh_ss(xb->d) * _cvtsh_ss(yb->d), dot, acc[r]);              \
        }                                                                                      \
    }                                                                                          \
    store(s, nr, acc, NULL);

/* Q4_1, Q5_1 (Q8_1 activations): d d_y (q . yq) per block, plus m_x s_y
 * summed in block order. */
#define BODY_MIN(block_t, QBODY, XR, YR)                                                       \
    const __m256i z = _mm256_setzero_si256();                                                  \
    __m256 acc[NR];                                                                            \
    float ms[NR];                                                                              \
    for (int r = 0; r < NR; r++) {                                                             \
        acc[r] = _mm256_setzero_ps();                                                          \
        ms[r] = 0.0f;                                                                          \
    }                                                                                          \
    for (int b = 0; b < n / 32; b++) {                                                         \
        for (int r = 0; r < NR; r++) {                                                         \
            const block_t * xb = (const block_t *) (XR) + b;                                   \
            const block_q8_1 * yb = (const block_q8_1 *) (YR) + b;                             \
            ms[r] += _cvtsh_ss(xb->m) * _cvtsh_ss(yb->s);                                      \
            QBODY                                                                              \
            acc[r] = fma_block(_cvtsh_ss(xb->d) * _cvtsh_ss(yb->d), _mm256_dpbusd_epi32(z, q, load32(yb->qs)), acc[r]); \
        }                                                                                      \
    }                                                                                          \
    store(s, nr, acc, ms);

#define DOTS(name, BODY, ...)                                                                  \
static void dots_##name(int n, int nr, float * s, const uint8_t * const * x, const void * y) {  \
    const uint8_t * xr[NR];                                                                    \
    fill(x, nr, xr);                                                                           \
    BODY(__VA_ARGS__, xr[r], y)                                                                \
}

DOTS(q4_0, BODY_OFFSET, block_q4_0, 8, const __m256i q = gs256_nibbles(xb->qs);)
DOTS(q5_0, BODY_OFFSET, block_q5_0, 16, const __m256i q = gs256_add_high(gs256_nibbles(xb->qs), xb->qh);)
DOTS(q8_0, BODY_OFFSET, block_q8_0, 0x80,
     const __m256i q = _mm256_xor_si256(load32(xb->qs), _mm256_set1_epi8((char) 0x80));)
DOTS(q4_1, BODY_MIN, block_q4_1, const __m256i q = gs256_nibbles(xb->qs);)
DOTS(q5_1, BODY_MIN, block_q5_1, const __m256i q = gs256_add_high(gs256_nibbles(xb->qs), xb->qh);)

const gs_sparse_dots_fn gs_sparse_dots_avx512[GS_TYPE_COUNT] = {
    [GS_TYPE_Q4_0] = dots_q4_0,
    [GS_TYPE_Q4_1] = dots_q4_1,
    [GS_TYPE_Q5_0] = dots_q5_0,
    [GS_TYPE_Q5_1] = dots_q5_1,
    [GS_TYPE_Q8_0] = dots_q8_0,
};
