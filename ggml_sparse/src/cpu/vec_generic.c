/*
 * vec_generic.c - scalar reference kernels: activation quantizers and dot
 * products of one weight row with one activation row, for every type.
 * The SIMD kernels (vec_avx2.c, vec_avx512.c) are tested against these.
 */
#include "../gs_internal.h"
#include "../quants_ref.h"
#include "vec_float.h"

#include <math.h>

/* ---- float types ----------------------------------------------------------
 * The order of float operations is llama.cpp's (its AVX-512 build; see the
 * comment on the 32-element block types below for why it matters). F16 and
 * BF16 weights take activations rounded to their own type (vec_dot_type F16
 * / BF16), as llama.cpp does.
 *
 * F32 and F16: elements are taken 64 at a time up to np = n rounded down to
 * a multiple of 64; element i goes, with a fused multiply-add, to float lane
 * i % 16 of accumulator (i / 16) % 4. The accumulators are combined as
 * (a0 + a2) + (a1 + a3) and their 16 lanes summed by gs_sum16. The last
 * n - np elements are then added one at a time (gs_f32_tail, gs_f16_tail in
 * vec_float.h): F16 adds their products (exact in float) to a double; F32
 * adds to a float, the first (n - np) / 8 * 8 as a rounded product followed
 * by a rounded add, the last (n - np) % 8 with fused multiply-adds (the
 * shape llama.cpp's compiled tail loop has). */

/* Accumulator lanes of elements [0, np) (LOAD(p, i) reads element i of p
 * as a float): lanes[l] = (a0 + a2) + (a1 + a3) for lane l. */
#define FLOAT_LANES_64(LOAD, np, lanes)                                        \
    do {                                                                       \
        float acc_[4][16] = { { 0 } };                                         \
        for (int i = 0; i < (np); i++) {                                       \
            float * a = &acc_[(i / 16) % 4][i % 16];                           \
            *a = fmaf(LOAD(x, i), LOAD(y, i), *a);                             \
        }                                                                      \
        for (int l = 0; l < 16; l++) (lanes)[l] = (acc_[0][l] + acc_[2][l]) + (acc_[1][l] + acc_[3][l]); \
    } while (0)

#define LOAD_F32(p, i) ((p)[i])
#define LOAD_F16(p, i) GS_H2F((p)[i])

static void vec_dot_f32(int n, float * s, const void * vx, const void * vy) {
    const float * x = vx, * y = vy;
    const int np = n & ~63;
    float lanes[16];
    FLOAT_LANES_64(LOAD_F32, np, lanes);
    *s = gs_f32_tail(x, y, np, n, gs_sum16(lanes));
}

static void vec_dot_f16(int n, float * s, const void * vx, const void * vy) {
    const gs_half * x = vx, * y = vy;
    const int np = n & ~63;
    float lanes[16];
    FLOAT_LANES_64(LOAD_F16, np, lanes);
    *s = gs_f16_tail(x, y, np, n, gs_sum16(lanes));
}

/* BF16 follows the AVX-512 BF16 dot instruction llama.cpp uses: elements
 * are taken 64 at a time; element pair (2j, 2j + 1) of the first 32 goes to
 * lane j of accumulator c0, of the second 32 to lane j of c1. Per pair the
 * product of the odd elements is added first, then that of the even ones,
 * each add rounded; inputs with a zero exponent (subnormals) count as zeros
 * and subnormal sums are flushed to zero (sign kept). The result is
 * gs_sum16(c0) + gs_sum16(c1) in double, then the products of the last n % 64
 * elements one at a time in double. */
static inline float bf16_daz(gs_bf16 h) {
    return gs_bf16_to_float((h & 0x7F80) ? h : (gs_bf16) (h & 0x8000));
}

static inline float flush_subnormal(float f) {
    return fabsf(f) < 0x1p-126f ? copysignf(0.0f, f) : f;
}

/* acc + odd product, then + even product, as the BF16 pair dot does */
static inline float bf16_pair(float acc, const gs_bf16 * x, const gs_bf16 * y) {
    const float odd = bf16_daz(x[1]) * bf16_daz(y[1]);
    const float even = bf16_daz(x[0]) * bf16_daz(y[0]);
    return flush_subnormal(flush_subnormal(acc + odd) + even);
}

static void vec_dot_bf16(int n, float * s, const void * vx, const void * vy) {
    const gs_bf16 * x = vx, * y = vy;
    const int np = n & ~63;
    float c[2][16] = { { 0 } };
    for (int i = 0; i < np; i += 2) {
        float * a = &c[(i / 32) % 2][(i % 32) / 2];
        *a = bf16_pair(*a, x + i, y + i);
    }
    *s = gs_bf16_tail(x, y, np, n, (double) gs_sum16(c[0]) + (double) gs_sum16(c[1]));
}

/* ---- batched order of the float types (gemm_tile; when: matmul.c) ---------
 * llama.cpp's tinyBLAS: one 16-lane accumulator per output; F32 / F16
 * element i goes to lane i % 16 with a fused multiply-add, BF16 element
 * pair (2j, 2j + 1) of each 32 to lane j as in vec_dot_bf16; the result is
 * gs_sum16 of the lanes. n is a multiple of 16 (BF16: 32). */
static float gemm_dot_f32(int n, const void * vx, const void * vy) {
    const float * x = vx, * y = vy;
    float acc[16] = { 0 };
    for (int i = 0; i < n; i++) acc[i % 16] = fmaf(x[i], y[i], acc[i % 16]);
    return gs_sum16(acc);
}

static float gemm_dot_f16(int n, const void * vx, const void * vy) {
    const gs_half * x = vx, * y = vy;
    float acc[16] = { 0 };
    for (int i = 0; i < n; i++) acc[i % 16] = fmaf(GS_H2F(x[i]), GS_H2F(y[i]), acc[i % 16]);
    return gs_sum16(acc);
}

static float gemm_dot_bf16(int n, const void * vx, const void * vy) {
    const gs_bf16 * x = vx, * y = vy;
    float acc[16] = { 0 };
    for (int i = 0; i < n; i += 2) acc[(i % 32) / 2] = bf16_pair(acc[(i % 32) / 2], x + i, y + i);
    return gs_sum16(acc);
}

#define GEMM_TILE(name)                                                                        \
static void gemm_tile_##name(int n, float * s, size_t bs, const void * vx, size_t bx,          \
                             const void * vy, size_t by, int nr, int nc) {                     \
    const uint8_t * x = vx, * y = vy;                                                          \
    for (int c = 0; c < nc; c++) {                                                             \
        for (int r = 0; r < nr; r++) s[(size_t) c * bs + r] = gemm_dot_##name(n, x + (size_t) r * bx, y + (size_t) c * by); \
    }                                                                                          \
}
GEMM_TILE(f32)
GEMM_TILE(f16)
GEMM_TILE(bf16)

/* Activations for F16 weights: round to nearest even, as the F16C
 * conversion llama.cpp uses (a NaN keeps its sign and top payload bits and
 * becomes quiet). */
static void quantize_row_f16_act(const float * x, void * vy, int64_t n) {
    gs_half * y = vy;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
            y[i] = (gs_half) (((u >> 16) & 0x8000) | 0x7E00 | ((u >> 13) & 0x3FF));
        } else {
            y[i] = gs_float_to_half(x[i]);
        }
    }
}

/* ---- 32-element block types ----------------------------------------------
 * The accumulation order is part of the contract: it equals llama.cpp's x86
 * kernels bit for bit, so both engines produce the same logits (a last-bit
 * difference flips activation quantization downstream and, over a few
 * dozen layers, can change the greedy token). Eight float lanes; lane l
 * takes the integer sum of the products of elements 4l..4l+3 of each block,
 * times d_x*d_y, with one fused multiply-add per block; the lanes are then
 * summed as ((0+4)+(2+6)) + ((1+5)+(3+7)). Types with a min (Q4_1, Q5_1)
 * add sum over blocks of m_x*s_y, accumulated separately in block order. */
static inline void lanes_fma(float * acc, float d, const int8_t * qx, const int8_t * qy) {
    for (int l = 0; l < 8; l++) {
        const int isum = qx[4 * l] * qy[4 * l] + qx[4 * l + 1] * qy[4 * l + 1] +
                         qx[4 * l + 2] * qy[4 * l + 2] + qx[4 * l + 3] * qy[4 * l + 3];
        acc[l] = fmaf(d, (float) isum, acc[l]);
    }
}

static inline float lanes_sum(const float * a) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

/* Element j < 16 is the low nibble of qs[j], element j + 16 the high one;
 * bit j of qh (if any) is element j's fifth bit; `offset` is subtracted. */
static inline void unpack_32(const uint8_t * qs, const uint8_t * qh, int offset, int8_t * q) {
    uint32_t h = 0;
    if (qh) memcpy(&h, qh, 4);
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t) (((qs[j] & 0xF) | (((h >> j) & 1) << 4)) - offset);
        q[j + 16] = (int8_t) (((qs[j] >> 4) | (((h >> (j + 16)) & 1) << 4)) - offset);
    }
}

static void vec_dot_q4_0(int n, float * s, const void * vx, const void * vy) {
    const block_q4_0 * x = vx;
    const block_q8_0 * y = vy;
    float acc[8] = { 0 };
    int8_t q[32];
    for (int b = 0; b < n / QK4_0; b++) {
        unpack_32(x[b].qs, NULL, 8, q);
        lanes_fma(acc, GS_H2F(x[b].d) * GS_H2F(y[b].d), q, y[b].qs);
    }
    *s = lanes_sum(acc);
}

static void vec_dot_q4_1(int n, float * s, const void * vx, const void * vy) {
    const block_q4_1 * x = vx;
    const block_q8_1 * y = vy;
    float acc[8] = { 0 }, summs = 0.0f;
    int8_t q[32];
    for (int b = 0; b < n / QK4_1; b++) {
        /* sum_i (d q_i + m) yd yq_i = d yd sum q_i yq_i + m * s_y */
        summs += GS_H2F(x[b].m) * GS_H2F(y[b].s);
        unpack_32(x[b].qs, NULL, 0, q);
        lanes_fma(acc, GS_H2F(x[b].d) * GS_H2F(y[b].d), q, y[b].qs);
    }
    *s = lanes_sum(acc) + summs;
}

static void vec_dot_q5_0(int n, float * s, const void * vx, const void * vy) {
    const block_q5_0 * x = vx;
    const block_q8_0 * y = vy;
    float acc[8] = { 0 };
    int8_t q[32];
    for (int b = 0; b < n / QK5_0; b++) {
        unpack_32(x[b].qs, x[b].qh, 16, q);
        lanes_fma(acc, GS_H2F(x[b].d) * GS_H2F(y[b].d), q, y[b].qs);
    }
    *s = lanes_sum(acc);
}

static void vec_dot_q5_1(int n, float * s, const void * vx, const void * vy) {
    const block_q5_1 * x = vx;
    const block_q8_1 * y = vy;
    float acc[8] = { 0 }, summs = 0.0f;
    int8_t q[32];
    for (int b = 0; b < n / QK5_1; b++) {
        summs += GS_H2F(x[b].m) * GS_H2F(y[b].s);
        unpack_32(x[b].qs, x[b].qh, 0, q);
        lanes_fma(acc, GS_H2F(x[b].d) * GS_H2F(y[b].d), q, y[b].qs);
    }
    *s = lanes_sum(acc) + summs;
}

static void vec_dot_q8_0(int n, float * s, const void * vx, const void * vy) {
    const block_q8_0 * x = vx;
    const block_q8_0 * y = vy;
    float acc[8] = { 0 };
    for (int b = 0; b < n / QK8_0; b++) lanes_fma(acc, GS_H2F(x[b].d) * GS_H2F(y[b].d), x[b].qs, y[b].qs);
    *s = lanes_sum(acc);
}

/* ---- K types (256-element super-blocks, Q8_K activations) -----------------
 * The activation row is Q8_K: d, qs[256], bsums[16] = sums of 16
 * consecutive qs. llama.cpp's x86 order: per super-block, eight int32 lanes;
 * lane l sums, over the eight groups g of 32 elements, the scaled products
 * of elements 32 g + 4 l .. 32 g + 4 l + 3 (exact integers). Each lane then
 * goes to float lane l with one fused multiply-add per super-block, by
 * d = d_y * d_x; the float lanes are summed as lanes_sum does. How the
 * weight offsets enter differs per type (see each kernel). */

/* Integer lanes of one super-block: q[e] are the weight codes (unsigned),
 * sc[e / 16] the scale of element e. */
static inline void k_lanes(const uint8_t * q, const int * sc, const int8_t * yq, int * lane) {
    for (int l = 0; l < 8; l++) lane[l] = 0;
    for (int e = 0; e < QK_K; e++) lane[(e % 32) / 4] += sc[e / 16] * q[e] * yq[e];
}

static inline void k_lanes_fma(float * acc, float d, const int * lane) {
    for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float) lane[l], acc[l]);
}

/* Q4_K / Q5_K codes (q in 0..31 with the fifth bit from qh, if any), their
 * scales per 16 elements and the 8 mins. Sub-block j (32 weights) is
 * nibble j % 2 of qs[32 (j / 2) ..], its fifth bit bit j of qh[0..31]. */
static inline void unpack_k4(const uint8_t * scales, const uint8_t * qs, const uint8_t * qh,
                             uint8_t * q, int * sc, int * m) {
    for (int j = 0; j < 8; j++) {
        uint8_t s8, m8;
        gs_get_scale_min_k4(j, scales, &s8, &m8);
        sc[2 * j] = sc[2 * j + 1] = s8;
        m[j] = m8;
        for (int l = 0; l < 32; l++) {
            int v = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0xF;
            if (qh) v |= ((qh[l] >> j) & 1) << 4;
            q[32 * j + l] = (uint8_t) v;
        }
    }
}

/* sum_i (d sc_j q_i - dmin m_j) yd yq_i: the mins term is
 * -dmin yd sum_j m_j (bsums[2j] + bsums[2j+1]). Q4_K keeps it in four float
 * lanes, lane i collecting sub-blocks 2i and 2i + 1 with one fused
 * multiply-add per super-block by -(d_y * dmin), summed at the end as
 * (0 + 2) + (1 + 3) and added to the main sum. */
static void vec_dot_q4_K(int n, float * s, const void * vx, const void * vy) {
    const block_q4_K * x = vx;
    const block_q8_K * y = vy;
    float acc[8] = { 0 }, accm[4] = { 0 };
    for (int b = 0; b < n / QK_K; b++) {
        uint8_t q[QK_K];
        int sc[16], m[8], lane[8];
        unpack_k4(x[b].scales, x[b].qs, NULL, q, sc, m);
        k_lanes(q, sc, y[b].qs, lane);
        const int16_t * bs = y[b].bsums;
        const float dmin = -y[b].d * GS_H2F(x[b].dmin);
        for (int i = 0; i < 4; i++) {
            const int mi = m[2 * i] * (bs[4 * i] + bs[4 * i + 1]) + m[2 * i + 1] * (bs[4 * i + 2] + bs[4 * i + 3]);
            accm[i] = fmaf(dmin, (float) mi, accm[i]);
        }
        k_lanes_fma(acc, y[b].d * GS_H2F(x[b].d), lane);
    }
    *s = lanes_sum(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3]));
}

/* As Q4_K with a fifth bit per weight; the mins term is one integer per
 * super-block, added to a single float with a fused multiply-add. */
static void vec_dot_q5_K(int n, float * s, const void * vx, const void * vy) {
    const block_q5_K * x = vx;
    const block_q8_K * y = vy;
    float acc[8] = { 0 }, summs = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        uint8_t q[QK_K];
        int sc[16], m[8], lane[8];
        unpack_k4(x[b].scales, x[b].qs, x[b].qh, q, sc, m);
        k_lanes(q, sc, y[b].qs, lane);
        int mins = 0;
        for (int j = 0; j < 8; j++) mins += m[j] * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        summs = fmaf(-y[b].d * GS_H2F(x[b].dmin), (float) mins, summs);
        k_lanes_fma(acc, y[b].d * GS_H2F(x[b].d), lane);
    }
    *s = lanes_sum(acc) + summs;
}

/* The 256 unsigned 6-bit codes of a Q6_K super-block in weight order (the
 * layout comment of block_q6_K). */
static inline void unpack_q6_K(const block_q6_K * x, uint8_t * q) {
    for (int h = 0; h < 2; h++) {
        const uint8_t * ql = x->ql + 64 * h;
        const uint8_t * qh = x->qh + 32 * h;
        uint8_t * qo = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            qo[l] = (uint8_t) ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4));
            qo[l + 32] = (uint8_t) ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
            qo[l + 64] = (uint8_t) ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
            qo[l + 96] = (uint8_t) ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
        }
    }
}

/* sum_i d sc_j (q_i - 32) yd yq_i over sub-blocks j of 16. Lane l takes the unsigned codes and
 * subtracts 32 (sc_2l bsums_2l + sc_2l+1 bsums_2l+1). */
static void vec_dot_q6_K(int n, float * s, const void * vx, const void * vy) {
    const block_q6_K * x = vx;
    const block_q8_K * y = vy;
    float acc[8] = { 0 };
    for (int b = 0; b < n / QK_K; b++) {
        uint8_t q[QK_K];
        unpack_q6_K(&x[b], q);
        int sc[16], lane[8];
        for (int j = 0; j < 16; j++) sc[j] = x[b].scales[j];
        k_lanes(q, sc, y[b].qs, lane);
        for (int l = 0; l < 8; l++) {
            lane[l] -= 32 * (sc[2 * l] * y[b].bsums[2 * l] + sc[2 * l + 1] * y[b].bsums[2 * l + 1]);
        }
        k_lanes_fma(acc, y[b].d * GS_H2F(x[b].d), lane);
    }
    *s = lanes_sum(acc);
}

/* ---- batched order of the K types (gemm_tile; when: matmul.c) -------------
 * llama.cpp's tiled K-quant GEMM: per output and super-block, the exact
 * integers s1 = sum_j sc_j (sum over sub-block j of q_i y_i) and (Q4_K,
 * Q5_K) s2 = sum_j m_j (bsums of sub-block j); then, in float,
 * t = s1 * d_x, t = t - dmin_x * s2 (one fused multiply-add) and
 * acc = acc + t * d_y (one fused multiply-add), super-block after
 * super-block. Q6_K's codes enter as q - 32. */
static inline float tiled_step(float acc, int s1, int s2, float d, float dmin, float dy) {
    float t = (float) s1 * d;
    t = fmaf(-dmin, (float) s2, t);
    return fmaf(t, dy, acc);
}

static float gemm_dot_k4(int n, const void * vx, const void * vy, const int five) {
    const block_q8_K * y = vy;
    float acc = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        const uint8_t * scales, * qs, * qh = NULL;
        gs_half d, dmin;
        if (five) {
            const block_q5_K * x = (const block_q5_K *) vx + b;
            scales = x->scales, qs = x->qs, qh = x->qh, d = x->d, dmin = x->dmin;
        } else {
            const block_q4_K * x = (const block_q4_K *) vx + b;
            scales = x->scales, qs = x->qs, d = x->d, dmin = x->dmin;
        }
        uint8_t q[QK_K];
        int sc[16], m[8], s1 = 0, s2 = 0;
        unpack_k4(scales, qs, qh, q, sc, m);
        for (int e = 0; e < QK_K; e++) s1 += sc[e / 16] * q[e] * y[b].qs[e];
        for (int j = 0; j < 8; j++) s2 += m[j] * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        acc = tiled_step(acc, s1, s2, GS_H2F(d), GS_H2F(dmin), y[b].d);
    }
    return acc;
}

static float gemm_dot_q4_K(int n, const void * vx, const void * vy) {
    return gemm_dot_k4(n, vx, vy, 0);
}

static float gemm_dot_q5_K(int n, const void * vx, const void * vy) {
    return gemm_dot_k4(n, vx, vy, 1);
}

static float gemm_dot_q6_K(int n, const void * vx, const void * vy) {
    const block_q6_K * x = vx;
    const block_q8_K * y = vy;
    float acc = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        uint8_t q[QK_K];
        unpack_q6_K(&x[b], q);
        int s1 = 0;
        for (int e = 0; e < QK_K; e++) s1 += x[b].scales[e / 16] * (q[e] - 32) * y[b].qs[e];
        acc = tiled_step(acc, s1, 0, GS_H2F(x[b].d), 0.0f, y[b].d);
    }
    return acc;
}

GEMM_TILE(q4_K)
GEMM_TILE(q5_K)
GEMM_TILE(q6_K)

const gs_cpu_type_funcs gs_cpu_funcs_scalar[GS_TYPE_COUNT] = {
    [GS_TYPE_F32]  = { gs_quantize_row_f32_ref,  vec_dot_f32,  gs_dequantize_row_f32,  NULL, gemm_tile_f32 },
    [GS_TYPE_F16]  = { quantize_row_f16_act,     vec_dot_f16,  gs_dequantize_row_f16,  NULL, gemm_tile_f16 },
    [GS_TYPE_BF16] = { gs_quantize_row_bf16_ref, vec_dot_bf16, gs_dequantize_row_bf16, NULL, gemm_tile_bf16 },
    [GS_TYPE_Q4_0] = { gs_quantize_row_q8_0_act, vec_dot_q4_0, gs_dequantize_row_q4_0 },
    [GS_TYPE_Q4_1] = { gs_quantize_row_q8_1_ref, vec_dot_q4_1, gs_dequantize_row_q4_1 },
    [GS_TYPE_Q5_0] = { gs_quantize_row_q8_0_act, vec_dot_q5_0, gs_dequantize_row_q5_0 },
    [GS_TYPE_Q5_1] = { gs_quantize_row_q8_1_ref, vec_dot_q5_1, gs_dequantize_row_q5_1 },
    [GS_TYPE_Q8_0] = { gs_quantize_row_q8_0_act, vec_dot_q8_0, gs_dequantize_row_q8_0 },
    [GS_TYPE_Q8_1] = { gs_quantize_row_q8_1_ref, NULL,         gs_dequantize_row_q8_1 },
    [GS_TYPE_Q4_K] = { gs_quantize_row_q8_K_ref, vec_dot_q4_K, gs_dequantize_row_q4_K, NULL, gemm_tile_q4_K },
    [GS_TYPE_Q5_K] = { gs_quantize_row_q8_K_ref, vec_dot_q5_K, gs_dequantize_row_q5_K, NULL, gemm_tile_q5_K },
    [GS_TYPE_Q6_K] = { gs_quantize_row_q8_K_ref, vec_dot_q6_K, gs_dequantize_row_q6_K, NULL, gemm_tile_q6_K },
    [GS_TYPE_Q8_K] = { gs_quantize_row_q8_K_ref, NULL,         gs_dequantize_row_q8_K },
};
