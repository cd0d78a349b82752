/*
 * repack.c - load-time repacking of Q4_0 weights into groups of 8
 * interleaved rows (layout: repack.h), the scalar reference kernel over
 * that layout, and the matrix product with a repacked weight tensor.
 * Repacked Q4_K weights keep their layout (products: repack_q4k.c).
 */
#include "repack.h"

#include <math.h>

bool gs_tensor_can_repack(const gs_tensor * t) {
    return t && t->op == GS_OP_NONE && !t->view_src && t->data &&
           (t->type == GS_TYPE_Q4_0 || t->type == GS_TYPE_Q4_K) &&
           !(t->flags & GS_FLAG_REPACKED) && t->ne[2] == 1 && t->ne[3] == 1 &&
           t->ne[1] % GS_R8_ROWS == 0 && gs_is_contiguous(t);
}

bool gs_tensor_is_repacked(const gs_tensor * t) {
    return t && (t->flags & GS_FLAG_REPACKED);
}

gs_status gs_tensor_repack(gs_tensor * t, void * dst, size_t dst_size) {
    GS_CHECK_ARG(t && dst, "gs_tensor_repack: NULL argument");
    if (!gs_tensor_can_repack(t)) {
        return gs_set_error(GS_ERR_TYPE, "tensor '%s' cannot be repacked: only a contiguous 2-D Q4_0 or Q4_K "
                            "leaf tensor with data, a multiple of 8 rows and not already repacked", t->name);
    }
    const size_t n = gs_tensor_nbytes(t);
    if (dst_size < n) {
        return gs_set_error(GS_ERR_INVALID_ARG, "gs_tensor_repack: %zu-byte buffer for tensor '%s' of %zu bytes",
                            dst_size, t->name, n);
    }
    const uint8_t * src = t->data;
    uint8_t * out = dst;
    if (out < src + n && src < out + n) {
        return gs_set_error(GS_ERR_INVALID_ARG, "gs_tensor_repack: the buffer overlaps tensor '%s''s data", t->name);
    }
    if (t->type == GS_TYPE_Q4_K) {   /* same bytes, llama.cpp's repacked order (repack.h) */
        memcpy(out, src, n);
        t->data = dst;
        t->flags = (t->flags & ~(uint32_t) GS_FLAG_ARENA) | GS_FLAG_REPACKED;
        return GS_OK;
    }
    const int64_t nb = t->ne[0] / QK4_0, M = t->ne[1];
    for (int64_t g = 0; g < M / GS_R8_ROWS; g++) {
        for (int64_t b = 0; b < nb; b++) {
            uint8_t * xb = out + (size_t) g * GS_R8_GROUP(nb) + (size_t) b * GS_R8_BLOCK;
            for (int r = 0; r < GS_R8_ROWS; r++) {
                const block_q4_0 * blk = (const block_q4_0 *) (src + (size_t) (g * GS_R8_ROWS + r) * t->nb[1]) + b;
                memcpy(xb + 2 * r, &blk->d, 2);
                for (int c = 0; c < 2; c++) memcpy(xb + 16 + 64 * c + 8 * r, blk->qs + 8 * c, 8);
            }
        }
    }
    t->data = dst;
    t->flags = (t->flags & ~(uint32_t) GS_FLAG_ARENA) | GS_FLAG_REPACKED;
    return GS_OK;
}

void gs_r8_gemm_scalar(int nb, float * s, size_t bs, const uint8_t * x, size_t bx,
                       const uint8_t * y, size_t by, int ng, int nc) {
    for (int g = 0; g < ng; g++) {
        for (int c = 0; c < nc; c++) {
            const uint8_t * xg = x + (size_t) g * bx;
            const int8_t * q = (const int8_t *) (y + (size_t) c * by);
            const float * dy = (const float *) (q + 32 * nb);
            float acc[GS_R8_ROWS] = { 0 };
            for (int b = 0; b < nb; b++) {
                const uint8_t * xb = xg + (size_t) b * GS_R8_BLOCK;
                const int8_t * qb = q + 32 * b;
                for (int r = 0; r < GS_R8_ROWS; r++) {
                    int isum = 0;
                    for (int k = 0; k < 2; k++) {
                        for (int j = 0; j < 8; j++) {
                            const uint8_t v = xb[16 + 64 * k + 8 * r + j];
                            isum += ((v & 15) - 8) * qb[8 * k + j] + ((v >> 4) - 8) * qb[16 + 8 * k + j];
                        }
                    }
                    gs_half dx;
                    memcpy(&dx, xb + 2 * r, 2);
                    const float dxy = GS_H2F(dx) * dy[b];
                    acc[r] = fmaf((float) isum, dxy, acc[r]);
                }
            }
            for (int r = 0; r < GS_R8_ROWS; r++) s[(size_t) c * bs + (size_t) g * GS_R8_ROWS + r] = acc[r];
        }
    }
}

/* ---- mul_mat with a repacked src[0] -------------------------------------- */
static size_t align_up(size_t n) {
    return (n + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN;
}

/* Q8_0 row (K elements) -> split row (repack.h) */
static void split_row(const block_q8_0 * y, uint8_t * out, int64_t K) {
    const int64_t nb = K / QK8_0;
    float * d = (float *) (out + K);
    int32_t * off = (int32_t *) (d + nb);
    for (int64_t b = 0; b < nb; b++) {
        memcpy(out + 32 * b, y[b].qs, 32);
        int sum = 0;
        for (int j = 0; j < 32; j++) sum += y[b].qs[j];
        d[b] = GS_H2F(y[b].d);
        off[b] = -8 * sum;
    }
}

static gs_r8_gemm_fn pick_kernel(void) {
    gs_cpu_info info;
    gs_cpu_get_info(&info);
    switch (info.level) {
        case GS_IMPL_AVX512: return gs_avx512_r8_gemm;
        case GS_IMPL_AVX2:   return gs_avx2_r8_gemm;
        default:             return gs_r8_gemm_scalar;
    }
}

/* Scratch: one activation row (N == 1): per thread, a Q8_0 row and its split
 * row; several rows: all split rows, then one Q8_0 row per thread. */
size_t gs_cpu_mul_mat_r8_work_size(const gs_tensor * dst, int n_threads) {
    const gs_tensor * b = dst->src[1];
    const size_t q_row = align_up(gs_type_row_size(GS_TYPE_Q8_0, b->ne[0]));
    const size_t s_row = align_up(GS_R8_ACT_BYTES(b->ne[0]));
    if (gs_nrows(b) == 1) return (q_row + s_row) * (size_t) n_threads;
    return s_row * (size_t) gs_nrows(b) + q_row * (size_t) n_threads;
}

void gs_cpu_op_mul_mat_r8(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const gs_tensor * b = dst->src[1];
    const int64_t K = a->ne[0], M = a->ne[1], nb = K / QK4_0;
    const int64_t N = b->ne[1], n2 = b->ne[2], n3 = b->ne[3], nr_b = N * n2 * n3;
    const gs_from_float_fn quantize = gs_cpu_funcs(GS_TYPE_Q8_0)->from_float;
    const size_t q_row = align_up(gs_type_row_size(GS_TYPE_Q8_0, K));
    const size_t s_row = align_up(GS_R8_ACT_BYTES(K));
    uint8_t * act;

    /* phase 1: activations -> Q8_0 -> split rows */
    if (nr_b == 1) {
        act = gs_thread_scratch(p);
        quantize((const float *) b->data, act + s_row, K);
        split_row((const block_q8_0 *) (act + s_row), act, K);
    } else {
        act = p->wdata;
        uint8_t * tmp = act + s_row * (size_t) nr_b + q_row * (size_t) p->ith;
        int64_t r0, r1;
        gs_split_rows(nr_b, p->ith, p->nth, &r0, &r1);
        for (int64_t r = r0; r < r1; r++) {
            const int64_t i1 = r % N, i2 = (r / N) % n2, i3 = r / (N * n2);
            quantize((const float *) ((const uint8_t *) b->data + i1 * b->nb[1] + i2 * b->nb[2] + i3 * b->nb[3]),
                     tmp, K);
            split_row((const block_q8_0 *) tmp, act + (size_t) r * s_row, K);
        }
        gs_barrier(p);
    }

    /* phase 2: groups of 8 weight rows split across threads */
    int64_t g0, g1;
    gs_split_rows(M / GS_R8_ROWS, p->ith, p->nth, &g0, &g1);
    if (g1 <= g0) return;
    const gs_r8_gemm_fn gemm = pick_kernel();
    const size_t bx = GS_R8_GROUP(nb);
    for (int64_t i3 = 0; i3 < n3; i3++) {
        for (int64_t i2 = 0; i2 < n2; i2++) {
            float * d_plane = (float *) ((uint8_t *) dst->data + i2 * dst->nb[2] + i3 * dst->nb[3]);
            gemm((int) nb, d_plane + g0 * GS_R8_ROWS, dst->nb[1] / sizeof(float),
                 (const uint8_t *) a->data + (size_t) g0 * bx, bx,
                 act + (size_t) ((i3 * n2 + i2) * N) * s_row, s_row, (int) (g1 - g0), (int) N);
        }
    }
}
