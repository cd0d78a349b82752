/*
 * ops_sparse.c - neuron-sparse FFN kernels: checking an active-neuron index
 * and the row-sparse product for gate/up (the index from scores or
 * activations is in ops_sparse_index.c, the axpy in ops_sparse_axpy.c).
 *
 * Row-sparse product: activations are quantized to the weights'
 * vec_dot_type as in matmul.c. Then, token after token, threads split that
 * token's active neurons evenly. Each thread owns the output entries from its
 * first neuron up to the next thread's first, so it also writes the zeros of
 * the inactive neurons in between: no two threads touch the same output and
 * no extra pass is needed. Scattered rows go 4 at a time to a kernel that
 * runs 4 dot products side by side; long runs of consecutive rows to the
 * type's tile kernel. A batch is processed token by token (measured faster
 * here than visiting the union of the tokens' neurons once: the rows a token
 * shares with the previous ones are read from cache; docs/sparse_cpu.md).
 * Without an index, or with every neuron active, the product runs as
 * gs_mul_mat does (bit-identical), skipping only masked rows.
 */
#include "sparse.h"

#define ROW_BLOCK 16      /* GEMM tile of a dense batch, as matmul.c        */
#define COL_BLOCK 16
#define MIN_TILE_RUN 4    /* shorter runs of rows: one vec_dot each         */
#define LONG_RUN 16       /* with a 4-row kernel, shorter runs use it       */
#define DOTS_ROWS 4       /* rows per call of gs_sparse_dots.rows           */
#define PREFETCH_AHEAD 4  /* rows requested this many active neurons ahead  */
#define DENSE_BATCH 0.25  /* batches keeping this share or more: dense + mask */

/* ---- index checks ---------------------------------------------------------- */
/* A column of an M-neuron index: 0 <= count <= M, ids ascending in [0, M). */
static bool column_ok(const int32_t * col, int64_t M) {
    const int64_t c = col[0];
    if (c < 0 || c > M) return false;
    int64_t prev = -1;
    for (int64_t e = 1; e <= c; e++) {
        if (col[e] <= prev || col[e] >= M) return false;
        prev = col[e];
    }
    return true;
}

bool gs_sparse_check_index(const gs_compute_params * p, const gs_tensor * idx, int64_t M) {
    if (!idx) return true;
    /* every thread reads the whole index (a few thousand ints per token), so
     * all agree without synchronising */
    const int32_t * I = idx->data;
    for (int64_t t = 0; t < idx->ne[1]; t++) {
        if (!column_ok(I + t * (M + 1), M)) {
            if (p->ith == 0) {
                gs_compute_fail(p, GS_ERR_RUNTIME,
                                "sparse index '%s', token %lld: not an active-neuron list (count %d; ids must "
                                "ascend in [0, %lld))", idx->name, (long long) t, I[t * (M + 1)], (long long) M);
            }
            return false;
        }
    }
    return true;
}

bool gs_sparse_begin(const gs_compute_params * p, const gs_tensor * x, gs_type vt, uint8_t * wq,
                     const gs_tensor * idx, int64_t M) {
    const size_t q_row = gs_type_row_size(vt, x->ne[0]);
    const gs_from_float_fn quantize = gs_cpu_funcs(vt)->from_float;
    int64_t r0, r1;
    gs_split_rows(x->ne[1], p->ith, p->nth, &r0, &r1);
    for (int64_t t = r0; t < r1; t++) {
        quantize((const float *) ((const uint8_t *) x->data + t * x->nb[1]), wq + t * q_row, x->ne[0]);
    }
    gs_barrier(p);
    return gs_sparse_check_index(p, idx, M);
}

gs_sparse_list gs_sparse_list_of(const gs_tensor * idx, int64_t M, int64_t t) {
    if (!idx) return (gs_sparse_list) { NULL, M };
    const int32_t * col = (const int32_t *) idx->data + t * (M + 1);
    return (gs_sparse_list) { col + 1, col[0] };
}

/* The mean share of the M neurons the tokens of a checked index list. */
static double mean_share(const gs_tensor * idx, int64_t M) {
    int64_t n = 0;
    for (int64_t t = 0; t < idx->ne[1]; t++) n += ((const int32_t *) idx->data)[t * (M + 1)];
    return (double) n / ((double) M * (double) idx->ne[1]);
}

/* Whether every token lists every neuron (a checked index). */
static bool all_active(const gs_tensor * idx, int64_t M) {
    for (int64_t t = 0; t < idx->ne[1]; t++) {
        if (((const int32_t *) idx->data)[t * (M + 1)] != M) return false;
    }
    return true;
}

/* ---- row-sparse product ----------------------------------------------------- */
size_t gs_cpu_mul_mat_sparse_work_size(const gs_tensor * dst, int n_threads) {
    (void) n_threads;
    const gs_tensor * a = dst->src[0];
    const gs_tensor * b = dst->src[1];
    const gs_type vt = gs_get_type_traits(a->type)->vec_dot_type;
    return gs_type_row_size(vt, b->ne[0]) * (size_t) b->ne[1];
}

typedef struct {
    int K;
    int64_t N;                /* tokens                                  */
    const uint8_t * a;        /* weight rows, a_row bytes apart           */
    size_t a_row, a_bytes;
    const uint8_t * q;        /* quantized activations, q_row bytes apart */
    size_t q_row;
    uint8_t * d;              /* output rows (one per token)              */
    size_t d_row;
    const int32_t * skip;     /* skip mask or NULL                        */
    const gs_cpu_type_funcs * f;
    gs_sparse_dots_fn dots;   /* 4 scattered rows per call (or NULL)    */
} mm_args;

static inline float * out_row(const mm_args * g, int64_t t) {
    return (float *) (g->d + t * g->d_row);
}

static inline bool skipped(const mm_args * g, int64_t m) {
    return g->skip && g->skip[m] != 0;
}

/* Dots of weight rows [m0, m1) with tokens [t0, t1), as gs_mul_mat computes them. */
static void dots_block(const mm_args * g, int64_t m0, int64_t m1, int64_t t0, int64_t t1) {
    const gs_cpu_type_funcs * f = g->f;
    const int64_t nt = t1 - t0;
    if (f->vec_dot_tile && nt == 1 && m1 - m0 >= MIN_TILE_RUN) {
        f->vec_dot_tile(g->K, out_row(g, t0) + m0, 0, g->a + m0 * g->a_row, g->a_row, g->q + t0 * g->q_row,
                        g->q_row, (int) (m1 - m0), 1);
        return;
    }
    if (f->vec_dot_tile && nt > 1) {
        for (int64_t mb = m0; mb < m1; mb += ROW_BLOCK) {
            const int64_t me = mb + ROW_BLOCK < m1 ? mb + ROW_BLOCK : m1;
            for (int64_t tb = t0; tb < t1; tb += COL_BLOCK) {
                const int64_t nc = t1 - tb < COL_BLOCK ? t1 - tb : COL_BLOCK;
                f->vec_dot_tile(g->K, out_row(g, tb) + mb, g->d_row / sizeof(float), g->a + mb * g->a_row,
                                g->a_row, g->q + tb * g->q_row, g->q_row, (int) (me - mb), (int) nc);
            }
        }
        return;
    }
    for (int64_t t = t0; t < t1; t++) {
        for (int64_t m = m0; m < m1; m++) f->vec_dot(g->K, out_row(g, t) + m, g->a + m * g->a_row, g->q + t * g->q_row);
    }
}

static void zero_block(const mm_args * g, int64_t m0, int64_t m1, int64_t t0, int64_t t1) {
    if (m1 <= m0) return;
    for (int64_t t = t0; t < t1; t++) memset(out_row(g, t) + m0, 0, (size_t) (m1 - m0) * sizeof(float));
}

/* No index (or every neuron active): this thread's share of the rows, all
 * tokens, in runs of rows that are not skipped. */
static void product_all(const gs_compute_params * p, const mm_args * g, int64_t M) {
    int64_t r0, r1;
    gs_split_rows(M, p->ith, p->nth, &r0, &r1);
    for (int64_t m = r0; m < r1;) {
        int64_t end = m;
        if (skipped(g, m)) {
            while (end < r1 && skipped(g, end)) end++;
            zero_block(g, m, end, 0, g->N);
        } else {
            while (end < r1 && !skipped(g, end)) end++;
            dots_block(g, m, end, 0, g->N);
        }
        m = end;
    }
}

/* A batch whose tokens keep many of the neurons (mean share >= DENSE_BATCH):
 * every row for every token with the dense tiles, each row read once instead
 * of once per token, then each token's entries outside its list set to 0.
 * The tiles give the single-row kernels' bits, so the values are those of
 * product_token. Threads zero within their own rows (product_all's split). */
static void product_batch_masked(const gs_compute_params * p, const mm_args * g, const gs_tensor * idx, int64_t M) {
    product_all(p, g, M);
    int64_t r0, r1;
    gs_split_rows(M, p->ith, p->nth, &r0, &r1);
    for (int64_t t = 0; t < g->N; t++) {
        const gs_sparse_list l = gs_sparse_list_of(idx, M, t);
        float * out = out_row(g, t);
        int64_t lo = 0, hi = l.n;   /* first list entry >= r0 */
        while (lo < hi) {
            const int64_t mid = (lo + hi) / 2;
            if (l.ids[mid] < r0) lo = mid + 1; else hi = mid;
        }
        int64_t prev = r0;
        for (int64_t e = lo; e < l.n && l.ids[e] < r1; e++) {
            if (l.ids[e] > prev) memset(out + prev, 0, (size_t) (l.ids[e] - prev) * sizeof(float));
            prev = l.ids[e] + 1;
        }
        if (r1 > prev) memset(out + prev, 0, (size_t) (r1 - prev) * sizeof(float));
    }
}

/* Scattered rows of one token waiting to be computed 4 at a time. */
typedef struct {
    const uint8_t * y;        /* the token's quantized activations        */
    const uint8_t * x[DOTS_ROWS];
    float * s[DOTS_ROWS];
    int n;
} row_group;

static void group_flush(const mm_args * g, row_group * rg) {
    if (rg->n == 0) return;
    float s[DOTS_ROWS];
    g->dots(g->K, rg->n, s, rg->x, rg->y);
    for (int i = 0; i < rg->n; i++) *rg->s[i] = s[i];
    rg->n = 0;
}

static void group_add(const mm_args * g, row_group * rg, int64_t m, float * s) {
    rg->x[rg->n] = g->a + m * g->a_row;
    rg->s[rg->n++] = s;
    if (rg->n == DOTS_ROWS) group_flush(g, rg);
}

/* Token t: this thread's share of its active neurons, and the zeros up to
 * the next thread's share. */
static void product_token(const gs_compute_params * p, const mm_args * g, const gs_sparse_list * l,
                          int64_t M, int64_t t) {
    int64_t e0, e1;
    gs_split_rows(l->n, p->ith, p->nth, &e0, &e1);
    const int64_t lo = p->ith == 0 ? 0 : (e0 < l->n ? gs_sparse_id(l, e0) : M);
    const int64_t hi = p->ith == p->nth - 1 ? M : (e1 < l->n ? gs_sparse_id(l, e1) : M);
    float * out = out_row(g, t);
    row_group rg = { .y = g->q + t * g->q_row, .n = 0 };
    int64_t prev = lo;
    gs_rows_prefetch pf = gs_rows_prefetch_init(g->a, g->a_row, g->a_bytes, M, l->n);
    for (int64_t e = e0; e < e1;) {
        gs_rows_prefetch_at(&pf, gs_sparse_id(l, e), e + PREFETCH_AHEAD < e1 ? gs_sparse_id(l, e + PREFETCH_AHEAD) : -1);
        const int64_t m = gs_sparse_id(l, e++);
        zero_block(g, prev, m, t, t + 1);
        prev = m + 1;
        if (skipped(g, m)) {
            out[m] = 0.0f;
            continue;
        }
        int64_t end = m + 1;   /* a run of consecutive active neurons */
        while (e < e1 && gs_sparse_id(l, e) == end && !skipped(g, end)) {
            gs_rows_prefetch_at(&pf, end, e + PREFETCH_AHEAD < e1 ? gs_sparse_id(l, e + PREFETCH_AHEAD) : -1);
            e++;
            end++;
        }
        if (g->dots && end - m < LONG_RUN) {
            for (int64_t k = m; k < end; k++) group_add(g, &rg, k, out + k);
        } else {
            dots_block(g, m, end, t, t + 1);
        }
        prev = end;
    }
    if (g->dots) group_flush(g, &rg);
    zero_block(g, prev, hi, t, t + 1);
}

void gs_cpu_op_mul_mat_sparse(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const gs_tensor * b = dst->src[1];
    const gs_tensor * idx = dst->src[2];
    const int64_t K = a->ne[0], M = a->ne[1], N = b->ne[1];
    const gs_type vt = gs_get_type_traits(a->type)->vec_dot_type;
    const size_t q_row = gs_type_row_size(vt, K);
    uint8_t * wq = p->wdata;
    if (!gs_sparse_begin(p, b, vt, wq, idx, M)) return;

    gs_cpu_info info;
    gs_cpu_get_info(&info);
    const mm_args g = {
        .K = (int) K, .N = N, .a = a->data, .a_row = a->nb[1], .a_bytes = gs_type_row_size(a->type, K),
        .q = wq, .q_row = q_row, .d = dst->data, .d_row = dst->nb[1],
        .skip = dst->src[3] ? (const int32_t *) dst->src[3]->data : NULL, .f = gs_cpu_funcs(a->type),
        .dots = info.level >= GS_IMPL_AVX512 ? gs_sparse_dots_avx512[a->type] : NULL,
    };
    if (!idx || all_active(idx, M)) {
        product_all(p, &g, M);
        return;
    }
    if (N > 1 && g.f->vec_dot_tile && mean_share(idx, M) >= DENSE_BATCH) {
        product_batch_masked(p, &g, idx, M);
        return;
    }
    for (int64_t t = 0; t < N; t++) {
        const gs_sparse_list l = gs_sparse_list_of(idx, M, t);
        product_token(p, &g, &l, M, t);
    }
}
