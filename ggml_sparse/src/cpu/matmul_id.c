/*
 * matmul_id.c - the expert-indexed matrix product (gs_mul_mat_id, contract
 * in gs_moe.h): dst {M, n_used, T}, dst[t][u] = as[ids[u][t]] . b[t][u or 0].
 *
 * Every thread first checks all ids (all agree on failing without waiting
 * for each other) and groups the (token, slot) pairs by expert in its own
 * part of the scratch: a counting sort, pairs in ascending t * n_used + u
 * within an expert, the -1 pairs left out (the same list on every thread).
 * Phase 1: the threads split the grouped pairs and quantize each pair's
 * activation row into the type's vec_dot_type, at its place in the grouped
 * order (so an expert's rows are consecutive; a broadcast row is quantized
 * once per pair, the same bits each time). Phase 2: the threads split the M
 * weight rows; per expert with pairs, a thread walks its rows in blocks and
 * per block all of the expert's pairs (so the expert's weights are read once
 * per call), as matmul.c does: tile kernels on ROW_BLOCK x COL_BLOCK tiles
 * (a single pair: all of the thread's rows in one call), else one vec_dot
 * per (row, pair). Rows of -1 pairs are set to zero.
 *
 * Every result is one vec_dot's value (a vec_dot_tile equals vec_dot bit for
 * bit; the gemm_tile orders that gs_mul_mat takes for some batches are never
 * used here), so a token's rows do not depend on the other tokens of the
 * batch, nor on the thread count.
 */
#include "../gs_internal.h"

#define ROW_BLOCK 16
#define COL_BLOCK 16

static size_t align_up(size_t n) {
    return (n + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN;
}

/* Bytes of the shared quantized rows, and of each thread's own part. */
static void scratch_layout(const gs_tensor * dst, size_t * q_bytes, size_t * per_thread, size_t * q_row) {
    const gs_tensor * as = dst->src[0];
    const gs_tensor * ids = dst->src[2];
    const gs_type vt = gs_get_type_traits(as->type)->vec_dot_type;
    const int64_t P = gs_nelements(ids), n_expert = as->ne[2];
    *q_row = gs_type_row_size(vt, as->ne[0]);
    *q_bytes = align_up(*q_row * (size_t) P);
    *per_thread = align_up(sizeof(int32_t) * (size_t) (n_expert + 1 + P)) +
                  align_up(sizeof(float) * ROW_BLOCK * COL_BLOCK);
}

size_t gs_cpu_mul_mat_id_work_size(const gs_tensor * dst, int n_threads) {
    size_t q_bytes, per_thread, q_row;
    scratch_layout(dst, &q_bytes, &per_thread, &q_row);
    return q_bytes + per_thread * (size_t) n_threads;
}

void gs_cpu_op_mul_mat_id(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * as = dst->src[0];
    const gs_tensor * b = dst->src[1];
    const gs_tensor * ids = dst->src[2];
    const int64_t K = as->ne[0], M = as->ne[1], n_expert = as->ne[2];
    const int64_t n_used = ids->ne[0], T = ids->ne[1], P = n_used * T;
    const bool bcast = b->ne[1] == 1;
    const int32_t * id = ids->data;

    for (int64_t i = 0; i < P; i++) {
        if (id[i] < -1 || id[i] >= n_expert) {
            if (p->ith == 0) {
                gs_compute_fail(p, GS_ERR_RUNTIME, "gs_mul_mat_id: expert id %d (slot %lld of token %lld) of '%s' "
                                "is outside 0..%lld (or -1: computed elsewhere)", id[i], (long long) (i % n_used),
                                (long long) (i / n_used), ids->name, (long long) (n_expert - 1));
            }
            return;
        }
    }

    size_t q_bytes, per_thread, q_row;
    scratch_layout(dst, &q_bytes, &per_thread, &q_row);
    uint8_t * wq = p->wdata;
    uint8_t * mine = (uint8_t *) p->wdata + q_bytes + per_thread * (size_t) p->ith;
    int32_t * off = (int32_t *) mine;              /* off[e]..off[e + 1]: expert e's pairs */
    int32_t * order = off + n_expert + 1;          /* the pairs, grouped by expert        */
    float * tmp = (float *) (mine + align_up(sizeof(int32_t) * (size_t) (n_expert + 1 + P)));

    /* group the pairs by expert (counting sort) */
    memset(off, 0, sizeof(int32_t) * (size_t) (n_expert + 1));
    for (int64_t i = 0; i < P; i++) if (id[i] >= 0) off[id[i] + 1]++;
    for (int64_t e = 0; e < n_expert; e++) off[e + 1] += off[e];
    const int64_t n_valid = off[n_expert];
    /* order: pairs in ascending index within each expert; off[e] is the next
     * free place while filling, restored afterwards */
    for (int64_t i = 0; i < P; i++) if (id[i] >= 0) order[off[id[i]]++] = (int32_t) i;
    for (int64_t e = n_expert; e > 0; e--) off[e] = off[e - 1];
    off[0] = 0;

    /* phase 1: the grouped pairs' activation rows -> vec_dot_type */
    const gs_type vt = gs_get_type_traits(as->type)->vec_dot_type;
    const gs_from_float_fn quantize = gs_cpu_funcs(vt)->from_float;
    int64_t g0, g1;
    gs_split_rows(n_valid, p->ith, p->nth, &g0, &g1);
    for (int64_t g = g0; g < g1; g++) {
        const int64_t pair = order[g], t = pair / n_used, u = pair % n_used;
        const float * src = (const float *) ((const uint8_t *) b->data + (bcast ? 0 : u) * b->nb[1] + t * b->nb[2]);
        quantize(src, wq + g * q_row, K);
    }
    gs_barrier(p);

    /* phase 2: the thread's weight rows of every chosen expert */
    const gs_cpu_type_funcs * fa = gs_cpu_funcs(as->type);
    const gs_vec_dot_tile_fn tile = fa->vec_dot_tile;
    int64_t r0, r1;
    gs_split_rows(M, p->ith, p->nth, &r0, &r1);
    if (r1 <= r0) return;
#define OUT_ROW(pair) ((float *) ((uint8_t *) dst->data + ((pair) % n_used) * dst->nb[1] + ((pair) / n_used) * dst->nb[2]))
    for (int64_t i = 0; i < P; i++) {
        if (id[i] < 0) memset(OUT_ROW(i) + r0, 0, sizeof(float) * (size_t) (r1 - r0));
    }
    for (int64_t e = 0; e < n_expert; e++) {
        const int64_t c0 = off[e], cnt = off[e + 1] - off[e];
        if (cnt == 0) continue;
        const uint8_t * a_e = (const uint8_t *) as->data + e * as->nb[2];
        const uint8_t * q_e = wq + c0 * q_row;
        if (tile && cnt == 1) {
            tile((int) K, OUT_ROW(order[c0]) + r0, 0, a_e + r0 * as->nb[1], as->nb[1], q_e, q_row,
                 (int) (r1 - r0), 1);
            continue;
        }
        for (int64_t m0 = r0; m0 < r1; m0 += ROW_BLOCK) {
            const int64_t m1 = m0 + ROW_BLOCK < r1 ? m0 + ROW_BLOCK : r1;
            if (tile) {
                for (int64_t n0 = 0; n0 < cnt; n0 += COL_BLOCK) {
                    const int64_t nc = cnt - n0 < COL_BLOCK ? cnt - n0 : COL_BLOCK;
                    tile((int) K, tmp, ROW_BLOCK, a_e + m0 * as->nb[1], as->nb[1], q_e + n0 * q_row, q_row,
                         (int) (m1 - m0), (int) nc);
                    for (int64_t c = 0; c < nc; c++) {
                        memcpy(OUT_ROW(order[c0 + n0 + c]) + m0, tmp + c * ROW_BLOCK, sizeof(float) * (size_t) (m1 - m0));
                    }
                }
                continue;
            }
            for (int64_t c = 0; c < cnt; c++) {
                float * d_row = OUT_ROW(order[c0 + c]);
                const uint8_t * q = q_e + c * q_row;
                for (int64_t m = m0; m < m1; m++) fa->vec_dot((int) K, &d_row[m], a_e + m * as->nb[1], q);
            }
        }
    }
#undef OUT_ROW
}
