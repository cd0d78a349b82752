/*
 * ops_sparse_axpy.c - the down projection of a sparse FFN as an axpy over
 * rows of ffn_down_t: out[t] = sum of act[t][m] * (row m) over token t's
 * active neurons m.
 *
 * Threads split the output columns (whole blocks of the weight type), not
 * the neurons: each thread walks every active neuron and reads its slice of
 * the row. Every output element is then summed by one thread in ascending
 * neuron order, so the result does not depend on the thread count and no
 * partial sums need reducing. Rows are added a few at a time (one pass over
 * the output slice for ROWS rows) with the type's SIMD axpy kernel where the
 * active level has one, else dequantized with the type's to_float and
 * added. A batch is processed token by token, as the row-sparse product.
 */
#include "sparse.h"

#define PREFETCH_AHEAD 4  /* rows requested this many active neurons ahead  */
#define ROWS 4            /* rows added per pass over the output slice      */

size_t gs_cpu_axpy_sparse_work_size(const gs_tensor * dst, int n_threads) {
    return (size_t) n_threads * gs_sparse_align((size_t) dst->src[0]->ne[0] * sizeof(float));
}

gs_axpy_rows_fn gs_sparse_axpy_rows(gs_type type) {
    gs_cpu_info info;
    gs_cpu_get_info(&info);
    if (info.level >= GS_IMPL_AVX512 && gs_axpy_rows_avx512[type]) return gs_axpy_rows_avx512[type];
    if (info.level >= GS_IMPL_AVX2 && gs_axpy_rows_avx2[type]) return gs_axpy_rows_avx2[type];
    return NULL;
}

typedef struct {
    gs_axpy_rows_fn simd;     /* NULL: dequantize into tmp, then add     */
    gs_to_float_fn to_float;
    float * tmp;
    int n;                    /* elements of this thread's slice          */
    const uint8_t * x0;       /* the slice in row 0; rows x_row apart     */
    size_t x_row, x_bytes;
    const int32_t * skip;
} axpy_args;

/* y += a[r] * x[r] for r = 0..nr-1, in that order */
static void add_rows(const axpy_args * g, int nr, const float * a, const uint8_t * const * x, float * y) {
    if (g->simd) {
        g->simd(g->n, nr, a, x, y);
        return;
    }
    for (int r = 0; r < nr; r++) {
        g->to_float(x[r], g->tmp, g->n);
        for (int i = 0; i < g->n; i++) y[i] += a[r] * g->tmp[i];
    }
}

/* y = sum over the listed neurons m (not skipped) of act[m] * slice of row m */
static void axpy_token(const axpy_args * g, const gs_sparse_list * l, const float * act, float * y) {
    memset(y, 0, (size_t) g->n * sizeof(float));
    for (int64_t e = 0; e < l->n;) {
        float a[ROWS];
        const uint8_t * x[ROWS];
        int nr = 0;
        while (e < l->n && nr < ROWS) {
            if (e + PREFETCH_AHEAD < l->n) gs_prefetch(g->x0 + gs_sparse_id(l, e + PREFETCH_AHEAD) * g->x_row, g->x_bytes);
            const int64_t m = gs_sparse_id(l, e++);
            if (g->skip && g->skip[m]) continue;
            a[nr] = act[m];
            x[nr++] = g->x0 + m * g->x_row;
        }
        if (nr) add_rows(g, nr, a, x, y);
    }
}

void gs_cpu_op_axpy_sparse(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const gs_tensor * act = dst->src[1];
    const gs_tensor * idx = dst->src[2];
    const int64_t E = a->ne[0], M = a->ne[1], N = act->ne[1];
    if (!gs_sparse_check_index(p, idx, M)) return;
    const gs_type_traits * tt = gs_get_type_traits(a->type);
    int64_t b0, b1;
    gs_split_rows(E / tt->blck_size, p->ith, p->nth, &b0, &b1);
    if (b1 <= b0) return;
    const int64_t c0 = b0 * tt->blck_size;
    const int n = (int) ((b1 - b0) * tt->blck_size);
    const axpy_args g = {
        .simd = gs_sparse_axpy_rows(a->type), .to_float = tt->to_float,
        .tmp = (float *) ((uint8_t *) p->wdata + (size_t) p->ith * gs_sparse_align((size_t) E * sizeof(float))),
        .n = n, .x0 = (const uint8_t *) a->data + (size_t) b0 * tt->type_size, .x_row = a->nb[1],
        .x_bytes = gs_type_row_size(a->type, n),
        .skip = dst->src[3] ? (const int32_t *) dst->src[3]->data : NULL,
    };
    for (int64_t t = 0; t < N; t++) {
        const gs_sparse_list l = gs_sparse_list_of(idx, M, t);
        axpy_token(&g, &l, (const float *) ((const uint8_t *) act->data + t * act->nb[1]),
                   (float *) ((uint8_t *) dst->data + t * dst->nb[1]) + c0);
    }
}
