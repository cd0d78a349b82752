/*
 * vec_avx512_sparse.c - AVX-512 VNNI dot products of up to 4 scattered
 * weight rows with one activation row (gs_sparse_dots_fn), for the rows of
 * a sparse index. The single-row kernels (vec_avx512_q.c) run one chain of
 * fused multiply-adds per row, so a row costs the chain's latency; here 4
 * rows share each activation block and run 4 chains side by side. Each
 * row's arithmetic is the single-row kernel's, operation for operation (8
 * int32 lanes per block, one fused multiply-add by d_x * d_y per block in
 * block order, gs256_hsum; Q4_1/Q5_1 add the m_x * s_y sum): the results are
 * bit-identical to gs_vec_dot's.
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

/* Rows x[0..nr) as NR pointers (the missing ones repeat x[0]; their
 * results are dropped). */
static inline void rows(const uint8_t * const * x, int nr, const uint8_t * xr[NR]) {
    for (int r = 0; r < NR; r++) xr[r] = x[r < nr ? r : 0];
}

static inline void store(float * s, int nr, const __m256 acc[NR], const float ms[NR]) {
    for (int r = 0; r < nr; r++) s[r] = ms ? gs256_hsum(acc[r]) + ms[r] : gs256_hsum(acc[r]);
}

/* Q4_0, Q5_0, Q8_0 (Q8_0 activations): per row and block,
 * q . y - off * sum(y) with weights q made unsigned. QBODY sets q from
 * block pointer xb. */
#define DOTS_OFFSET(name, block_t, off_byte, QBODY)                                           \
static void dots_##name(int n, int nr, float * s, const uint8_t * const * x, const void * vy) { \
    const block_q8_0 * y = vy;                                                                 \
    const uint8_t * xr[NR];                                                                    \
    rows(x, nr, xr);                                                                           \
    const __m256i z = _mm256_setzero_si256(), off = _mm256_set1_epi8((char) (off_byte));       \
    __m256 acc[NR];                                                                            \
    for (int r = 0; r < NR; r++) acc[r] = _mm256_setzero_ps();                                 \
    for (int b = 0; b < n / 32; b++) {                                                         \
        const __m256i yq = load32(y[b].qs);                                                    \
        const __m256i yo = _mm256_dpbusd_epi32(z, off, yq);                                    \
        const float dy = _cvtsh_ss(y[b].d);                                                    \
        for (int r = 0; r < NR; r++) {                                                         \
            const block_t * xb = (const block_t *) xr[r] + b;                                  \
            QBODY                                                                              \
            const __m256i dot = _mm256_sub_epi32(_mm256_dpbusd_epi32(z, q, yq), yo);           \
            acc[r] = fma_block(_cvtsh_ss(xb->d) * dy, dot, acc[r]);                            \
        }                                                                                      \
    }                                                                                          \
    store(s, nr, acc, NULL);                                                                   \
}

DOTS_OFFSET(q4_0, block_q4_0, 8, const __m256i q = gs256_nibbles(xb->qs);)
DOTS_OFFSET(q5_0, block_q5_0, 16, const __m256i q = gs256_add_high(gs256_nibbles(xb->qs), xb->qh);)
DOTS_OFFSET(q8_0, block_q8_0, 0x80, const __m256i q = _mm256_xor_si256(load32(xb->qs), _mm256_set1_epi8((char) 0x80));)

/* Q4_1, Q5_1 (Q8_1 activations): d d_y (q . yq) per block, plus m_x s_y
 * summed in block order. */
#define DOTS_MIN(name, block_t, QBODY)                                                         \
static void dots_##name(int n, int nr, float * s, const uint8_t * const * x, const void * vy) { \
    const block_q8_1 * y = vy;                                                                 \
    const uint8_t * xr[NR];                                                                    \
    rows(x, nr, xr);                                                                           \
    const __m256i z = _mm256_setzero_si256();                                                  \
    __m256 acc[NR];                                                                            \
    float ms[NR];                                                                              \
    for (int r = 0; r < NR; r++) {                                                             \
        acc[r] = _mm256_setzero_ps();                                                          \
        ms[r] = 0.0f;                                                                          \
    }                                                                                          \
    for (int b = 0; b < n / 32; b++) {                                                         \
        const __m256i yq = load32(y[b].qs);                                                    \
        const float dy = _cvtsh_ss(y[b].d), sy = _cvtsh_ss(y[b].s);                            \
        for (int r = 0; r < NR; r++) {                                                         \
            const block_t * xb = (const block_t *) xr[r] + b;                                  \
            ms[r] += _cvtsh_ss(xb->m) * sy;                                                    \
            QBODY                                                                              \
            acc[r] = fma_block(_cvtsh_ss(xb->d) * dy, _mm256_dpbusd_epi32(z, q, yq), acc[r]);  \
        }                                                                                      \
    }                                                                                          \
    store(s, nr, acc, ms);                                                                     \
}

DOTS_MIN(q4_1, block_q4_1, const __m256i q = gs256_nibbles(xb->qs);)
DOTS_MIN(q5_1, block_q5_1, const __m256i q = gs256_add_high(gs256_nibbles(xb->qs), xb->qh);)

const gs_sparse_dots_fn gs_sparse_dots_avx512[GS_TYPE_COUNT] = {
    [GS_TYPE_Q4_0] = dots_q4_0,
    [GS_TYPE_Q4_1] = dots_q4_1,
    [GS_TYPE_Q5_0] = dots_q5_0,
    [GS_TYPE_Q5_1] = dots_q5_1,
    [GS_TYPE_Q8_0] = dots_q8_0,
};
