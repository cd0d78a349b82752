/*
 * ops_sparse_index.c - the active-neuron index (format in ggml_sparse.h)
 * from predictor scores (score >= threshold, gs_sparse_index) or from
 * activation magnitudes (|act| >= threshold, gs_sparse_index_abs: CATS-style
 * training-free sparsity). One node type, GS_OP_SPARSE_INDEX; op_params[0]
 * is the threshold (float bits), op_params[1] the gs_index_mode.
 *
 * Threads split the neurons: each counts its active ones per token, then
 * after a barrier writes their ids after the counts of the threads before
 * it, so the list comes out ascending whatever the thread count. The scan
 * is a compare over contiguous floats: AVX-512 compresses the ids of a
 * 16-wide comparison mask straight into the list, AVX2 walks an 8-bit mask.
 */
#include "sparse.h"

#include <math.h>

/* Reference scan (gs_index_scan_fn contract in sparse.h). The comparisons are
 * false for NaN, so a NaN is never active. */
static int64_t scan_scalar(const float * s, int64_t n, float thr, bool magnitude, int32_t base, int32_t * ids) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) {
        const float v = magnitude ? fabsf(s[i]) : s[i];
        if (v >= thr) {
            if (ids) ids[c] = base + (int32_t) i;
            c++;
        }
    }
    return c;
}

static gs_index_scan_fn pick_scan(void) {
    gs_cpu_info info;
    gs_cpu_get_info(&info);
    if (info.level >= GS_IMPL_AVX512) return gs_index_scan_avx512;
    if (info.level >= GS_IMPL_AVX2) return gs_index_scan_avx2;
    return scan_scalar;
}

size_t gs_cpu_sparse_index_work_size(const gs_tensor * dst, int n_threads) {
    return (size_t) dst->ne[1] * (size_t) n_threads * sizeof(int64_t);
}

void gs_cpu_op_sparse_index(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * src = dst->src[0];
    float thr;
    memcpy(&thr, &dst->op_params[0], sizeof(float));
    const bool magnitude = dst->op_params[1] == GS_INDEX_MAGNITUDE;
    const gs_index_scan_fn scan = pick_scan();
    const int64_t M = src->ne[0], N = src->ne[1];
    int64_t * counts = p->wdata;
    int64_t lo, hi;
    gs_split_rows(M, p->ith, p->nth, &lo, &hi);
    for (int64_t t = 0; t < N; t++) {
        const float * s = (const float *) ((const uint8_t *) src->data + t * src->nb[1]);
        counts[t * p->nth + p->ith] = hi > lo ? scan(s + lo, hi - lo, thr, magnitude, 0, NULL) : 0;
    }
    gs_barrier(p);
    for (int64_t t = 0; t < N; t++) {
        const float * s = (const float *) ((const uint8_t *) src->data + t * src->nb[1]);
        int32_t * col = (int32_t *) dst->data + t * (M + 1);
        int64_t off = 0, total = 0;
        for (int i = 0; i < p->nth; i++) {
            if (i < p->ith) off += counts[t * p->nth + i];
            total += counts[t * p->nth + i];
        }
        if (p->ith == 0) col[0] = (int32_t) total;
        if (hi > lo) scan(s + lo, hi - lo, thr, magnitude, (int32_t) lo, col + 1 + off);
    }
}
