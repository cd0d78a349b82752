/*
 * quants.h - quantized block layouts, bit-compatible with GGUF/ggml.
 *
 * Shared by the C kernels and (later) the CUDA kernels: plain structs, no
 * functions. Every struct's size is checked against the GGUF block size.
 * `gs_half` is an IEEE binary16 bit pattern, `gs_bf16` a bfloat16 one.
 */
#ifndef GS_QUANTS_H
#define GS_QUANTS_H

#include <stdint.h>
#include <assert.h>

typedef uint16_t gs_half;
typedef uint16_t gs_bf16;

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256
#define K_SCALE_SIZE 12

/* Q4_0: w[i] = d * (q[i] - 8); element j < 16 is the low nibble of qs[j],
 * element j + 16 the high nibble of qs[j]. */
typedef struct {
    gs_half d;
    uint8_t qs[QK4_0 / 2];
} block_q4_0;
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");

/* Q4_1: w[i] = d * q[i] + m; nibble order as Q4_0. */
typedef struct {
    gs_half d;
    gs_half m;
    uint8_t qs[QK4_1 / 2];
} block_q4_1;
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 size");

/* Q5_0: w[i] = d * (q[i] - 16), q 5 bits: low 4 bits as Q4_0, bit 4 of
 * element j is bit j of the little-endian uint32 qh. */
typedef struct {
    gs_half d;
    uint8_t qh[4];
    uint8_t qs[QK5_0 / 2];
} block_q5_0;
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 size");

/* Q5_1: w[i] = d * q[i] + m, q as Q5_0. */
typedef struct {
    gs_half d;
    gs_half m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
} block_q5_1;
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 size");

/* Q8_0: w[i] = d * qs[i]. */
typedef struct {
    gs_half d;
    int8_t  qs[QK8_0];
} block_q8_0;
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");

/* Q8_1 (activations): x[i] ~= d * qs[i]; s = d * sum(qs) (both f16, as
 * current ggml stores them; older docs describe f32 fields and 40 bytes). */
typedef struct {
    gs_half d;
    gs_half s;
    int8_t  qs[QK8_1];
} block_q8_1;
static_assert(sizeof(block_q8_1) == 36, "block_q8_1 size");

/* Q4_K: 256 weights in 8 sub-blocks of 32. Sub-block j has a 6-bit scale
 * sc[j] and 6-bit min m[j] packed in `scales` (see gs_get_scale_min_k4);
 * w = d * sc[j] * q - dmin * m[j], q in 0..15. Weights 64*k .. 64*k+31 are
 * the low nibbles of qs[32*k .. 32*k+31], weights 64*k+32 .. 64*k+63 the
 * high nibbles. */
typedef struct {
    gs_half d;
    gs_half dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
} block_q4_K;
static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");

/* Q5_K: as Q4_K with a fifth bit: for the pair of sub-blocks k (weights
 * 64*k .. 64*k+63), weight 64*k + l has bit 2k of qh[l], weight 64*k+32+l
 * bit 2k+1 of qh[l]; q in 0..31. */
typedef struct {
    gs_half d;
    gs_half dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;
static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");

/* Q6_K: 256 weights in 16 sub-blocks of 16, w = d * scales[j] * (q - 32),
 * q 6 bits: low 4 bits in ql, high 2 bits in qh. Per half (128 weights,
 * ql += 64, qh += 32 per half), for l in 0..31:
 *   q[l]      = (ql[l]      & 15) | ((qh[l] >> 0 & 3) << 4)
 *   q[l + 32] = (ql[l + 32] & 15) | ((qh[l] >> 2 & 3) << 4)
 *   q[l + 64] = (ql[l]      >> 4) | ((qh[l] >> 4 & 3) << 4)
 *   q[l + 96] = (ql[l + 32] >> 4) | ((qh[l] >> 6 & 3) << 4)      */
typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t  scales[QK_K / 16];
    gs_half d;
} block_q6_K;
static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");

/* Q8_K (activations): x[i] ~= d * qs[i]; bsums[j] = sum of qs[16j..16j+15]. */
typedef struct {
    float   d;
    int8_t  qs[QK_K];
    int16_t bsums[QK_K / 16];
} block_q8_K;
static_assert(sizeof(block_q8_K) == 292, "block_q8_K size");

#endif /* GS_QUANTS_H */
