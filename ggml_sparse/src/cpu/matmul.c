/*
 * matmul.c - quantized-weight x F32-activation matrix products (GEMV/GEMM).
 *
 * dst {M, N, n2, n3} = a {K, M, a2, a3} x b {K, N, n2, n3}:
 * dst[n][m] = dot(a row m, b row n). Phase 1: every thread converts a share
 * of b's rows into a's vec_dot_type in the scratch buffer (with a single
 * row, as in decoding, every thread converts it into its own part of the
 * scratch instead: no thread waits for another). Phase 2: threads
 * split a's rows; each walks blocks of weight rows and, per block, all
 * activation rows, so a block of weights is read from memory once per call
 * and reused from cache for every token. Types with a tile kernel get
 * ROW_BLOCK x COL_BLOCK tiles per call (kernels that reuse loads across
 * rows and tokens), or, for a single token, all of the thread's rows in one
 * call; the others one vec_dot per (row, token).
 *
 * Batches of F32 / F16 / BF16 weights in llama.cpp's order: for N >= 2
 * activation rows its CPU backend hands these types to tinyBLAS (llamafile's
 * sgemm) instead of its per-row dot, when K is a multiple of tinyBLAS's step
 * (16 elements; 32 for BF16, whose build uses the AVX-512 BF16 pair dot)
 * and M a multiple of 4; for F32 weights the activations must moreover be
 * contiguous (F16 / BF16 ones are converted into a contiguous buffer
 * first). Each output then has one 16-lane accumulator: the gemm_tile
 * kernels (vec_generic.c) reproduce it, and such products use them.
 *
 * Weights repacked at load (gs_tensor_repack) take repack.c's path (Q4_0)
 * or repack_q4k.c's (Q4_K).
 */
#include "repack.h"

#define ROW_BLOCK 16
#define COL_BLOCK 16

/* Bytes of one thread's private copy of a single quantized activation row. */
static size_t private_row_bytes(size_t q_row) {
    return (q_row + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN;
}

bool gs_cpu_gemm_order(gs_type type, int64_t K, int64_t M, int64_t N, bool b_contiguous) {
    if (N < 2) return false;
    switch (type) {
        case GS_TYPE_F32:  return b_contiguous && K % 16 == 0 && M % 4 == 0;
        case GS_TYPE_F16:  return K % 16 == 0 && M % 4 == 0;
        case GS_TYPE_BF16: return K % 32 == 0 && M % 4 == 0;
        case GS_TYPE_Q4_K:
        case GS_TYPE_Q5_K:
        case GS_TYPE_Q6_K: return N >= 8;
        default:           return false;
    }
}

size_t gs_cpu_mul_mat_work_size(const gs_tensor * dst, int n_threads) {
    const gs_tensor * a = dst->src[0];
    if ((a->flags & GS_FLAG_REPACKED) && a->type == GS_TYPE_Q4_K) return gs_cpu_mul_mat_q4kx8_work_size(dst, n_threads);
    if (a->flags & GS_FLAG_REPACKED) return gs_cpu_mul_mat_r8_work_size(dst, n_threads);
    const gs_tensor * b = dst->src[1];
    const gs_type vt = gs_get_type_traits(a->type)->vec_dot_type;
    const size_t q_row = gs_type_row_size(vt, b->ne[0]);
    if (gs_nrows(b) == 1) return private_row_bytes(q_row) * (size_t) n_threads;
    return q_row * (size_t) gs_nrows(b);
}

void gs_cpu_op_mul_mat(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    if (a->flags & GS_FLAG_REPACKED) {
        if (a->type == GS_TYPE_Q4_K) gs_cpu_op_mul_mat_q4kx8(p, dst);
        else gs_cpu_op_mul_mat_r8(p, dst);
        return;
    }
    const gs_tensor * b = dst->src[1];
    const int64_t K = a->ne[0], M = a->ne[1];
    const int64_t N = b->ne[1], n2 = b->ne[2], n3 = b->ne[3];
    const gs_type vt = gs_get_type_traits(a->type)->vec_dot_type;
    const gs_cpu_type_funcs * fa = gs_cpu_funcs(a->type);
    const gs_from_float_fn quantize = gs_cpu_funcs(vt)->from_float;
    const size_t q_row = gs_type_row_size(vt, K);
    /* op_params[0]: rowwise (gs_mul_mat_rowwise): the single-row order for every row */
    const bool gemm = !dst->op_params[0] && gs_cpu_gemm_order(a->type, K, M, N, gs_is_contiguous(b));
    const gs_vec_dot_tile_fn tile = gemm ? fa->gemm_tile : fa->vec_dot_tile;
    uint8_t * wq = p->wdata;

    /* phase 1: activations -> vec_dot_type, rows split across threads */
    const int64_t nr_b = N * n2 * n3;
    int64_t r0, r1;
    if (nr_b == 1) {
        wq = gs_thread_scratch(p);
        quantize((const float *) b->data, wq, K);
    } else {
        gs_split_rows(nr_b, p->ith, p->nth, &r0, &r1);
        for (int64_t r = r0; r < r1; r++) {
            const int64_t i1 = r % N, i2 = (r / N) % n2, i3 = r / (N * n2);
            const float * src = (const float *) ((const uint8_t *) b->data + i1 * b->nb[1] + i2 * b->nb[2] + i3 * b->nb[3]);
            quantize(src, wq + r * q_row, K);
        }
        gs_barrier(p);
    }

    /* phase 2: weight rows split across threads, per plane */
    const int64_t r2 = n2 / a->ne[2], r3 = n3 / a->ne[3];
    gs_split_rows(M, p->ith, p->nth, &r0, &r1);
    for (int64_t i3 = 0; i3 < n3; i3++) {
        for (int64_t i2 = 0; i2 < n2; i2++) {
            const uint8_t * a_plane = (const uint8_t *) a->data + (i2 / r2) * a->nb[2] + (i3 / r3) * a->nb[3];
            const uint8_t * q_plane = wq + ((i3 * n2 + i2) * N) * q_row;
            uint8_t * d_plane = (uint8_t *) dst->data + i2 * dst->nb[2] + i3 * dst->nb[3];
            if (tile && N == 1) {
                /* GEMV: one call for all of the thread's rows (the kernel picks
                 * an order that streams well from memory) */
                if (r1 > r0) {
                    tile((int) K, (float *) d_plane + r0, 0, a_plane + r0 * a->nb[1], a->nb[1],
                         q_plane, q_row, (int) (r1 - r0), 1);
                }
                continue;
            }
            for (int64_t m0 = r0; m0 < r1; m0 += ROW_BLOCK) {
                const int64_t m1 = m0 + ROW_BLOCK < r1 ? m0 + ROW_BLOCK : r1;
                if (tile) {
                    for (int64_t n0 = 0; n0 < N; n0 += COL_BLOCK) {
                        const int64_t nc = N - n0 < COL_BLOCK ? N - n0 : COL_BLOCK;
                        tile((int) K, (float *) (d_plane + n0 * dst->nb[1]) + m0,
                             dst->nb[1] / sizeof(float), a_plane + m0 * a->nb[1], a->nb[1],
                             q_plane + n0 * q_row, q_row, (int) (m1 - m0), (int) nc);
                    }
                    continue;
                }
                for (int64_t n = 0; n < N; n++) {
                    float * d_row = (float *) (d_plane + n * dst->nb[1]);
                    const uint8_t * q = q_plane + n * q_row;
                    for (int64_t m = m0; m < m1; m++) {
                        fa->vec_dot((int) K, &d_row[m], a_plane + m * a->nb[1], q);
                    }
                }
            }
        }
    }
}
