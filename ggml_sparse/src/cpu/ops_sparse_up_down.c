/*
 * ops_sparse_up_down.c - the up and down projections of a gated FFN for the
 * active neurons (gs_sparse_ffn_up_down, contract in ggml_sparse.h), the
 * gate's activation act[m] computed beforehand by a dense product: per
 * active neuron, the dot of its up row with the quantized activation, then
 * (act[m] * dot) times its ffn_down_t row added to the output, in one pass.
 *
 * Why one op: the three-op form (gs_mul_mat_sparse, gs_mul, gs_axpy_sparse)
 * writes two intermediate vectors and waits at a barrier after each op; here
 * a neuron's up and down rows are fetched back to back (requested ahead
 * as rows or as streams, gs_rows_prefetch in sparse.h) and the output of a
 * chunk stays in cache.
 *
 * Threads and order as gs_sparse_ffn_bundle (ops_sparse_bundle.c): each
 * token's active list is cut into GS_SPARSE_CHUNKS chunks, each summed from
 * zero into its own partial output (GROUP neurons per pass over it), the
 * threads take whole chunks, and after a barrier they split the output
 * elements and add the partials in chunk order: the result does not depend
 * on the thread count. Partials are double-buffered by token parity (one
 * barrier per token).
 *
 * Kernels: the up type's 4-row sparse dot (bit-identical to its vec_dot)
 * where the SIMD level has one, else vec_dot; the down type's SIMD row axpy,
 * else dequantize and add (the reference).
 */
#include "sparse.h"

#define GROUP 4           /* neurons per pass over y                   */
#define DOTS 4            /* rows per call of a 4-row dot kernel        */
#define PREFETCH_AHEAD 4  /* rows requested this many neurons ahead     */

size_t gs_cpu_sparse_ffn_up_down_work_size(const gs_tensor * dst, int n_threads) {
    return gs_sparse_fused_work_size(dst->src[0]->type, dst->src[3], n_threads);
}

typedef struct {
    int E;                         /* n_embd                               */
    const uint8_t * up, * down;    /* row 0 of each                        */
    size_t up_nb, down_nb;         /* row strides                          */
    size_t up_row, down_row;       /* bytes of one row                     */
    const int32_t * skip;          /* skip mask or NULL                    */
    gs_vec_dot_fn vec_dot;         /* up's                                 */
    gs_sparse_dots_fn dots;        /* up's 4-row kernel, or NULL           */
    gs_axpy_rows_fn axpy;          /* down's SIMD row axpy, or NULL        */
    gs_to_float_fn to_float;       /* down's                               */
    float * tmp;                   /* this thread's dequantization row     */
} up_down_args;

/* y += (act[m] * dot(up row m, q)) * down row m for the nr neurons m[r]. */
static void add_group(const up_down_args * g, int nr, const int64_t * m, const float * act, const void * q,
                      float * y) {
    const uint8_t * x[GROUP];
    float u[GROUP];
    for (int r = 0; r < nr; r++) x[r] = g->up + m[r] * g->up_nb;
    if (g->dots) {
        for (int r = 0; r < nr; r += DOTS) g->dots(g->E, nr - r < DOTS ? nr - r : DOTS, u + r, x + r, q);
    } else {
        for (int r = 0; r < nr; r++) g->vec_dot(g->E, &u[r], x[r], q);
    }
    for (int r = 0; r < nr; r++) {
        u[r] *= act[m[r]];
        x[r] = g->down + m[r] * g->down_nb;
    }
    if (g->axpy) {
        g->axpy(g->E, nr, u, x, y);
        return;
    }
    for (int r = 0; r < nr; r++) {
        g->to_float(x[r], g->tmp, g->E);
        for (int i = 0; i < g->E; i++) y[i] += u[r] * g->tmp[i];
    }
}

/* y = the sum over list entries [e0, e1) (skipped neurons left out); the
 * list has n of M neurons active (the prefetch mode, sparse.h). */
static void chunk(const up_down_args * g, const gs_sparse_list * l, int64_t M, int64_t e0, int64_t e1,
                  const float * act, const void * q, float * y) {
    memset(y, 0, (size_t) g->E * sizeof(float));
    gs_rows_prefetch pu = gs_rows_prefetch_init(g->up, g->up_nb, g->up_row, M, l->n);
    gs_rows_prefetch pd = gs_rows_prefetch_init(g->down, g->down_nb, g->down_row, M, l->n);
    int64_t m[GROUP];
    int nr = 0;
    for (int64_t e = e0; e < e0 + PREFETCH_AHEAD && e < e1; e++) {   /* the first rows (row mode) */
        if (!pu.stream) gs_rows_prefetch_at(&pu, 0, gs_sparse_id(l, e));
        if (!pd.stream) gs_rows_prefetch_at(&pd, 0, gs_sparse_id(l, e));
    }
    for (int64_t e = e0; e < e1; e++) {
        const int64_t id = gs_sparse_id(l, e);
        const int64_t ahead = e + PREFETCH_AHEAD < e1 ? gs_sparse_id(l, e + PREFETCH_AHEAD) : -1;
        gs_rows_prefetch_at(&pu, id, ahead);
        gs_rows_prefetch_at(&pd, id, ahead);
        if (g->skip && g->skip[id]) continue;
        m[nr++] = id;
        if (nr == GROUP) {
            add_group(g, nr, m, act, q, y);
            nr = 0;
        }
    }
    if (nr) add_group(g, nr, m, act, q, y);
}

void gs_cpu_op_sparse_ffn_up_down(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * up = dst->src[0];
    const gs_tensor * down = dst->src[1];
    const gs_tensor * act = dst->src[2];
    const gs_tensor * h = dst->src[3];
    const gs_tensor * idx = dst->src[4];
    const int64_t E = h->ne[0], M = up->ne[1], N = h->ne[1];
    const gs_type vt = gs_get_type_traits(up->type)->vec_dot_type;
    const size_t q_row = gs_type_row_size(vt, E), row = gs_sparse_align((size_t) E * sizeof(float));
    uint8_t * wq = p->wdata;
    float * partials = (float *) (wq + gs_sparse_q_bytes(dst->src[0]->type, h));
    if (!gs_sparse_begin(p, h, vt, wq, idx, M)) return;

    gs_cpu_info info;
    gs_cpu_get_info(&info);
    const up_down_args g = {
        .E = (int) E,
        .up = up->data, .down = down->data, .up_nb = up->nb[1], .down_nb = down->nb[1],
        .up_row = gs_type_row_size(up->type, E), .down_row = gs_type_row_size(down->type, E),
        .skip = dst->src[5] ? (const int32_t *) dst->src[5]->data : NULL,
        .vec_dot = gs_cpu_funcs(up->type)->vec_dot,
        .dots = info.level >= GS_IMPL_AVX512 ? gs_sparse_dots_avx512[up->type] : NULL,
        .axpy = gs_sparse_axpy_rows(down->type),
        .to_float = gs_get_type_traits(down->type)->to_float,
        .tmp = (float *) ((uint8_t *) partials + (2 * GS_SPARSE_CHUNKS + (size_t) p->ith) * row),
    };
    int64_t c0, c1, j0, j1;
    gs_split_rows(GS_SPARSE_CHUNKS, p->ith, p->nth, &c0, &c1);
    gs_split_rows(E, p->ith, p->nth, &j0, &j1);
    for (int64_t t = 0; t < N; t++) {
        const gs_sparse_list l = gs_sparse_list_of(idx, M, t);
        float * part = (float *) ((uint8_t *) partials + (size_t) (t & 1) * GS_SPARSE_CHUNKS * row);
        const float * a = (const float *) ((const uint8_t *) act->data + t * act->nb[1]);
        for (int64_t c = c0; c < c1; c++) {
            int64_t e0, e1;
            gs_split_rows(l.n, (int) c, GS_SPARSE_CHUNKS, &e0, &e1);
            chunk(&g, &l, M, e0, e1, a, wq + t * q_row, (float *) ((uint8_t *) part + (size_t) c * row));
        }
        gs_barrier(p);
        gs_sparse_reduce_chunks(part, row / sizeof(float), j0, j1,
                                (float *) ((uint8_t *) dst->data + t * dst->nb[1]));
    }
}
