/*
 * repack.h - the interleaved-rows layout of repacked Q4_0 weights and the
 * matrix-product kernels over it (repack.c: layout, scalar kernel, mul_mat
 * path; vec_avx512_repack.c, vec_avx2_repack.c: SIMD kernels); repacked
 * Q4_K weights (their order of operations, below).
 *
 * Weights {K, M} (M % 8 == 0) become M / 8 groups of 8 rows, GS_R8_GROUP(nb)
 * bytes apart (nb = K / 32 blocks per row). Group g holds, per block b in
 * order, one 144-byte "x8 block":
 *   d[8]     f16: d of block b of rows 8g + r, r = 0..7
 *   qs[128]  byte 64c + 8r + j (c = 0, 1; j = 0..7) = byte 8c + j of the
 *            qs of block b of row 8g + r, nibbles unchanged (0..15): the
 *            low nibbles of chunk c are elements 8c..8c+7, the high ones
 *            16+8c..16+8c+7.
 * The same bytes as the row-major tensor, only reordered.
 *
 * Activations: each F32 row is quantized to Q8_0 exactly as the row-major
 * product does, then stored as a "split row" of GS_R8_ACT_BYTES(K) bytes:
 *   int8  qs[K]     the quants, blocks in order
 *   float d[nb]     each block's d
 *   int32 off[nb]   -8 * (sum of the block's 32 quants): adds the -8 of the
 *                   weights to products of unsigned nibbles.
 *
 * Every kernel computes, per output (weight row m, activation row n), in
 * block order from acc = 0:
 *   isum = sum_j (q_m[b][j] - 8) * y_n[b][j]        (exact integer)
 *   acc  = fmaf((float) isum, d_m[b] * d_n[b], acc)  (product rounded first)
 * which is the order of llama.cpp's repacked Q4_0 GEMV/GEMM on x86.
 */
#ifndef GS_REPACK_H
#define GS_REPACK_H

#include "../gs_internal.h"

#define GS_R8_ROWS 8
#define GS_R8_BLOCK (GS_R8_ROWS * (int) sizeof(block_q4_0))   /* 144 bytes */
#define GS_R8_GROUP(nb) ((size_t) (nb) * GS_R8_BLOCK)
#define GS_R8_ACT_BYTES(K) ((size_t) (K) + (size_t) (K) / 32 * 8)

/* s[c * bs + 8 g + r] = product of row r of group g with split activation
 * row c, for groups 0..ng-1 (at x, bx bytes apart) and activation rows
 * 0..nc-1 (at y, by bytes apart); K = 32 nb. */
typedef void (*gs_r8_gemm_fn)(int nb, float * s, size_t bs, const uint8_t * x, size_t bx,
                              const uint8_t * y, size_t by, int ng, int nc);

void gs_r8_gemm_scalar(int nb, float * s, size_t bs, const uint8_t * x, size_t bx,
                       const uint8_t * y, size_t by, int ng, int nc);
void gs_avx2_r8_gemm(int nb, float * s, size_t bs, const uint8_t * x, size_t bx,
                     const uint8_t * y, size_t by, int ng, int nc);
void gs_avx512_r8_gemm(int nb, float * s, size_t bs, const uint8_t * x, size_t bx,
                       const uint8_t * y, size_t by, int ng, int nc);

/* mul_mat with a repacked src[0] (called from matmul.c). */
size_t gs_cpu_mul_mat_r8_work_size(const gs_tensor * dst, int n_threads);
void gs_cpu_op_mul_mat_r8(const gs_compute_params * p, gs_tensor * dst);

/* ---- Q4_K in llama.cpp's repacked order (repack_q4k.c) --------------------
 * A repacked Q4_K weight {K, M} (M % 8 == 0) keeps its row-major blocks (the
 * repack copies them byte for byte): what changes is the order of the float
 * operations of its products, which follow llama.cpp's repacked Q4_K GEMV
 * and GEMM on x86 (ggml_gemv_q4_K_8x8_q8_K, ggml_gemm_q4_K_8x8_q8_K). Per
 * output (weight row, Q8_K activation row), from acc = accm = 0, per step:
 *   s1   = sum over the step's sub-blocks j of sc_j (q_j . y_j)   (exact int)
 *   s2   = sum over them of m_j (bsums_2j + bsums_2j+1)           (exact int)
 *   acc  = fmaf((float) s1, d_x * d_y, acc)
 *   accm = fmaf((float) s2, dmin_x * d_y, accm)
 * and the result is acc - accm. A step is a super-block (256 weights) for
 * activation rows taken one at a time (its GEMV), a pair of sub-blocks (64
 * weights) for rows taken four at a time (its GEMM): of N activation rows,
 * llama.cpp takes rows n < N - N % 4 four at a time when N >= 4.
 * `pairs` selects the step. */
typedef void (*gs_q4kx8_dot_fn)(int n, float * s, const void * x, const void * y, int pairs);
void gs_q4kx8_dot_scalar(int n, float * s, const void * x, const void * y, int pairs);
void gs_avx2_q4kx8_dot(int n, float * s, const void * x, const void * y, int pairs);
void gs_avx512_q4kx8_dot(int n, float * s, const void * x, const void * y, int pairs);
/* The same products for a tile: s[c * bs + r] for weight rows r < nr (bx
 * bytes apart) and activation rows c < nc (by bytes apart), all in one step
 * kind (vec_avx512_ktile.c, vec_avx2_k.c). */
typedef void (*gs_q4kx8_tile_fn)(int n, float * s, size_t bs, const void * x, size_t bx,
                                 const void * y, size_t by, int nr, int nc, int pairs);
void gs_avx512_q4kx8_tile(int n, float * s, size_t bs, const void * x, size_t bx,
                          const void * y, size_t by, int nr, int nc, int pairs);
void gs_avx2_q4kx8_tile(int n, float * s, size_t bs, const void * x, size_t bx,
                        const void * y, size_t by, int nr, int nc, int pairs);
/* the kernels of the active SIMD level (the tile kernel NULL below AVX2) */
gs_q4kx8_dot_fn gs_q4kx8_kernel(void);
gs_q4kx8_tile_fn gs_q4kx8_tile_kernel(void);
size_t gs_cpu_mul_mat_q4kx8_work_size(const gs_tensor * dst, int n_threads);
void gs_cpu_op_mul_mat_q4kx8(const gs_compute_params * p, gs_tensor * dst);

#endif /* GS_REPACK_H */
