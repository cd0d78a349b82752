/*
 * ops_sparse.c - neuron-sparse FFN kernels: the active-neuron index from
 * predictor scores, the visit plan shared by the sparse ops, and the
 * row-sparse product for gate/up (the axpy is in ops_sparse_axpy.c).
 *
 * Row-sparse product: activations are quantized to the weights'
 * vec_dot_type as in matmul.c; then threads split the visited neurons
 * evenly. Each thread owns the output entries from its first visited neuron
 * up to the next thread's first, so it writes the zeros of the inactive
 * neurons in between as well: no two threads touch the same output, and no
 * extra pass is needed. Consecutive visited neurons of a single token (or of
 * a dense product) form runs handed to the type's tile kernel, so an
 * all-active index runs exactly like gs_mul_mat.
 */
#include "sparse.h"

#define ROW_BLOCK 16      /* GEMM tile of a dense batch, as matmul.c        */
#define COL_BLOCK 16
#define MIN_TILE_RUN 4    /* shorter runs of single-token rows: vec_dot     */
#define PREFETCH_AHEAD 4  /* rows requested this many visited neurons ahead */
#define DOTS_ROWS 4       /* rows per call of a gs_sparse_dots_fn          */
#define LONG_RUN 16       /* with such a kernel, shorter runs use it too    */

static size_t align_up(size_t n) { return (n + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN; }

/* ---- visit plan ---------------------------------------------------------- */
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

static void report_bad_column(const gs_compute_params * p, const gs_tensor * idx, int64_t t, int64_t M) {
    gs_compute_fail(p, GS_ERR_RUNTIME,
                    "sparse index '%s', token %lld: not an active-neuron list (count %d; ids must ascend "
                    "in [0, %lld))", idx->name, (long long) t, ((const int32_t *) idx->data)[t * (M + 1)],
                    (long long) M);
}

/* First position e in ids[0..c) with ids[e] >= v (ids ascending). */
static int64_t lower_bound(const int32_t * ids, int64_t c, int64_t v) {
    int64_t lo = 0, hi = c;
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (ids[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

size_t gs_sparse_plan_scratch(int64_t M, int64_t n_tokens, int n_threads, bool has_idx) {
    if (!has_idx || n_tokens <= 1) return 0;
    const int64_t words = (n_tokens + 63) / 64;
    return align_up((size_t) (M * words) * sizeof(uint64_t)) + align_up((size_t) M * sizeof(int32_t)) +
           align_up((size_t) n_threads * sizeof(int64_t));
}

bool gs_sparse_plan(const gs_compute_params * p, const gs_tensor * idx, const gs_tensor * skip,
                    int64_t M, int64_t N, void * scratch, gs_sparse_plan_t * plan) {
    plan->skip = skip ? (const int32_t *) skip->data : NULL;
    plan->tokens = NULL;
    plan->words = 0;
    if (!idx) {
        plan->ids = NULL;
        plan->n = M;
        return true;
    }
    const int32_t * I = idx->data;
    if (N == 1) {
        /* every thread checks the (short) list itself: no synchronisation */
        if (!column_ok(I, M)) {
            if (p->ith == 0) report_bad_column(p, idx, 0, M);
            return false;
        }
        plan->ids = I + 1;
        plan->n = I[0];
        return true;
    }
    /* several tokens: the union of their lists, and per neuron which tokens
     * need it. Thread ith marks the neurons [lo, hi) and lists them. */
    const int64_t words = (N + 63) / 64;
    uint64_t * bits = scratch;
    int32_t * list = (int32_t *) ((uint8_t *) scratch + align_up((size_t) (M * words) * sizeof(uint64_t)));
    int64_t * counts = (int64_t *) ((uint8_t *) list + align_up((size_t) M * sizeof(int32_t)));
    for (int64_t t = p->ith; t < N; t += p->nth) {
        if (!column_ok(I + t * (M + 1), M)) {
            report_bad_column(p, idx, t, M);
            break;
        }
    }
    int64_t lo, hi;
    gs_split_rows(M, p->ith, p->nth, &lo, &hi);
    memset(bits + lo * words, 0, (size_t) ((hi - lo) * words) * sizeof(uint64_t));
    for (int64_t t = 0; t < N; t++) {
        /* bad columns are reported above; reading them stays in bounds */
        const int32_t * col = I + t * (M + 1);
        const int64_t c = col[0] < 0 ? 0 : (col[0] > M ? M : col[0]);
        for (int64_t e = lower_bound(col + 1, c, lo); e < c && col[1 + e] < hi; e++) {
            if (col[1 + e] >= lo) bits[col[1 + e] * words + t / 64] |= 1ull << (t % 64);
        }
    }
    int64_t count = 0;
    for (int64_t m = lo; m < hi; m++) {
        if (plan->skip && plan->skip[m]) continue;
        for (int64_t w = 0; w < words; w++) {
            if (bits[m * words + w]) {
                count++;
                break;
            }
        }
    }
    counts[p->ith] = count;
    gs_barrier(p);
    if (atomic_load(&p->state->error)) return false;
    int64_t off = 0, total = 0;
    for (int i = 0; i < p->nth; i++) {
        if (i < p->ith) off += counts[i];
        total += counts[i];
    }
    for (int64_t m = lo; m < hi; m++) {
        if (plan->skip && plan->skip[m]) continue;
        for (int64_t w = 0; w < words; w++) {
            if (bits[m * words + w]) {
                list[off++] = (int32_t) m;
                break;
            }
        }
    }
    gs_barrier(p);
    plan->ids = list;
    plan->n = total;
    plan->skip = NULL;   /* applied while listing */
    plan->tokens = bits;
    plan->words = words;
    return true;
}

/* ---- index from scores ---------------------------------------------------- */
size_t gs_cpu_sparse_index_work_size(const gs_tensor * dst, int n_threads) {
    return (size_t) dst->ne[1] * (size_t) n_threads * sizeof(int64_t);
}

/* Threads split the neurons: each counts its active ones per token, then
 * writes them after the counts of the threads before it. */
void gs_cpu_op_sparse_index(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * score = dst->src[0];
    float thr;
    memcpy(&thr, &dst->op_params[0], sizeof(float));
    const int64_t M = score->ne[0], N = score->ne[1];
    int64_t * counts = p->wdata;
    int64_t lo, hi;
    gs_split_rows(M, p->ith, p->nth, &lo, &hi);
    for (int64_t t = 0; t < N; t++) {
        const float * s = (const float *) ((const uint8_t *) score->data + t * score->nb[1]);
        int64_t c = 0;
        for (int64_t m = lo; m < hi; m++) c += s[m] >= thr;
        counts[t * p->nth + p->ith] = c;
    }
    gs_barrier(p);
    for (int64_t t = 0; t < N; t++) {
        const float * s = (const float *) ((const uint8_t *) score->data + t * score->nb[1]);
        int32_t * col = (int32_t *) dst->data + t * (M + 1);
        int64_t off = 0, total = 0;
        for (int i = 0; i < p->nth; i++) {
            if (i < p->ith) off += counts[t * p->nth + i];
            total += counts[t * p->nth + i];
        }
        if (p->ith == 0) col[0] = (int32_t) total;
        int32_t * w = col + 1 + off;
        for (int64_t m = lo; m < hi; m++) {
            if (s[m] >= thr) *w++ = (int32_t) m;
        }
    }
}

/* ---- row-sparse product ----------------------------------------------------- */
size_t gs_cpu_mul_mat_sparse_work_size(const gs_tensor * dst, int n_threads) {
    const gs_tensor * a = dst->src[0];
    const gs_tensor * b = dst->src[1];
    const gs_type vt = gs_get_type_traits(a->type)->vec_dot_type;
    return align_up(gs_type_row_size(vt, b->ne[0]) * (size_t) b->ne[1]) +
           gs_sparse_plan_scratch(a->ne[1], b->ne[1], n_threads, dst->src[2] != NULL);
}

typedef struct {
    int K;
    int64_t N;
    const uint8_t * a;        /* weight rows, a_row bytes apart           */
    size_t a_row;
    const uint8_t * q;        /* quantized activations, q_row bytes apart */
    size_t q_row;
    uint8_t * d;              /* output rows (one per token)              */
    size_t d_row;
    const gs_cpu_type_funcs * f;
    gs_sparse_dots_fn dots;   /* scattered rows, one token (or NULL)    */
} mm_args;

/* Single-token rows waiting to be computed together by mm_args.dots. */
typedef struct {
    const uint8_t * x[DOTS_ROWS];
    int64_t m[DOTS_ROWS];
    int n;
} row_group;

static void group_flush(const mm_args * g, row_group * rg) {
    if (rg->n == 0) return;
    float s[DOTS_ROWS];
    g->dots(g->K, rg->n, s, rg->x, g->q);
    for (int i = 0; i < rg->n; i++) ((float *) g->d)[rg->m[i]] = s[i];
    rg->n = 0;
}

static void group_add(const mm_args * g, row_group * rg, int64_t m) {
    rg->x[rg->n] = g->a + m * g->a_row;
    rg->m[rg->n++] = m;
    if (rg->n == DOTS_ROWS) group_flush(g, rg);
}

static inline float * out_row(const mm_args * g, int64_t t) {
    return (float *) (g->d + t * g->d_row);
}

/* Output entries of neurons [m0, m1) of every token = 0. */
static void zero_neurons(const mm_args * g, int64_t m0, int64_t m1) {
    if (m1 <= m0) return;
    for (int64_t t = 0; t < g->N; t++) memset(out_row(g, t) + m0, 0, (size_t) (m1 - m0) * sizeof(float));
}

/* Dots of weight rows [m0, m1) with every token. */
static void dots_all_tokens(const mm_args * g, row_group * rg, int64_t m0, int64_t m1) {
    const gs_cpu_type_funcs * f = g->f;
    if (g->dots && g->N == 1 && m1 - m0 < LONG_RUN) {
        for (int64_t m = m0; m < m1; m++) group_add(g, rg, m);
        return;
    }
    if (f->vec_dot_tile && g->N == 1 && m1 - m0 >= MIN_TILE_RUN) {
        f->vec_dot_tile(g->K, out_row(g, 0) + m0, 0, g->a + m0 * g->a_row, g->a_row, g->q, g->q_row,
                        (int) (m1 - m0), 1);
        return;
    }
    if (f->vec_dot_tile && g->N > 1) {
        for (int64_t mb = m0; mb < m1; mb += ROW_BLOCK) {
            const int64_t me = mb + ROW_BLOCK < m1 ? mb + ROW_BLOCK : m1;
            for (int64_t nb = 0; nb < g->N; nb += COL_BLOCK) {
                const int64_t nc = g->N - nb < COL_BLOCK ? g->N - nb : COL_BLOCK;
                f->vec_dot_tile(g->K, out_row(g, nb) + mb, g->d_row / sizeof(float), g->a + mb * g->a_row,
                                g->a_row, g->q + nb * g->q_row, g->q_row, (int) (me - mb), (int) nc);
            }
        }
        return;
    }
    for (int64_t t = 0; t < g->N; t++) {
        for (int64_t m = m0; m < m1; m++) f->vec_dot(g->K, out_row(g, t) + m, g->a + m * g->a_row, g->q + t * g->q_row);
    }
}

/* Whether every one of the N tokens needs neuron m (always without a token map). */
static bool all_tokens(const gs_sparse_plan_t * plan, int64_t m, int64_t N) {
    if (!plan->tokens) return true;
    const uint64_t * w = plan->tokens + m * plan->words;
    for (int64_t i = 0; i < N / 64; i++) if (w[i] != ~0ull) return false;
    return N % 64 == 0 || w[N / 64] == (1ull << (N % 64)) - 1;
}

/* Neuron m for the tokens whose bit is set in tokens[0..words), 0 for the rest. */
static void dots_some_tokens(const mm_args * g, int64_t m, const uint64_t * tokens) {
    for (int64_t t = 0; t < g->N; t++) {
        float * o = out_row(g, t) + m;
        if (tokens[t / 64] >> (t % 64) & 1) g->f->vec_dot(g->K, o, g->a + m * g->a_row, g->q + t * g->q_row);
        else *o = 0.0f;
    }
}

void gs_cpu_op_mul_mat_sparse(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const gs_tensor * b = dst->src[1];
    const int64_t K = a->ne[0], M = a->ne[1], N = b->ne[1];
    const gs_type vt = gs_get_type_traits(a->type)->vec_dot_type;
    const size_t q_row = gs_type_row_size(vt, K);
    const gs_from_float_fn quantize = gs_cpu_funcs(vt)->from_float;
    uint8_t * wq = p->wdata;
    int64_t r0, r1;
    gs_split_rows(N, p->ith, p->nth, &r0, &r1);
    for (int64_t t = r0; t < r1; t++) {
        quantize((const float *) ((const uint8_t *) b->data + t * b->nb[1]), wq + t * q_row, K);
    }
    gs_barrier(p);
    gs_sparse_plan_t plan;
    if (!gs_sparse_plan(p, dst->src[2], dst->src[3], M, N, wq + align_up(q_row * (size_t) N), &plan)) return;

    gs_cpu_info info;
    gs_cpu_get_info(&info);
    const mm_args g = {
        .K = (int) K, .N = N, .a = a->data, .a_row = a->nb[1], .q = wq, .q_row = q_row,
        .d = dst->data, .d_row = dst->nb[1], .f = gs_cpu_funcs(a->type),
        .dots = N == 1 && info.level >= GS_IMPL_AVX512 ? gs_sparse_dots_avx512[a->type] : NULL,
    };
    row_group rg = { .n = 0 };
    /* this thread: visited neurons [e0, e1), output entries of neurons [lo, hi) */
    int64_t e0, e1;
    gs_split_rows(plan.n, p->ith, p->nth, &e0, &e1);
    const int64_t lo = p->ith == 0 ? 0 : (e0 < plan.n ? gs_sparse_plan_id(&plan, e0) : M);
    const int64_t hi = p->ith == p->nth - 1 ? M : (e1 < plan.n ? gs_sparse_plan_id(&plan, e1) : M);
    const size_t a_bytes = gs_type_row_size(a->type, K);
    int64_t prev = lo;
    for (int64_t e = e0; e < e1;) {
        if (e + PREFETCH_AHEAD < e1) gs_prefetch(g.a + gs_sparse_plan_id(&plan, e + PREFETCH_AHEAD) * g.a_row, a_bytes);
        const int64_t m = gs_sparse_plan_id(&plan, e++);
        zero_neurons(&g, prev, m);
        prev = m + 1;
        if (gs_sparse_plan_skips(&plan, m)) {
            zero_neurons(&g, m, m + 1);
        } else if (!all_tokens(&plan, m, N)) {
            dots_some_tokens(&g, m, plan.tokens + m * plan.words);
        } else {
            /* extend to a run of consecutive neurons that every token needs */
            int64_t end = m + 1;
            while (e < e1 && gs_sparse_plan_id(&plan, e) == end && !gs_sparse_plan_skips(&plan, end) &&
                   all_tokens(&plan, end, N)) {
                if (e + PREFETCH_AHEAD < e1) gs_prefetch(g.a + gs_sparse_plan_id(&plan, e + PREFETCH_AHEAD) * g.a_row, a_bytes);
                e++;
                end++;
            }
            dots_all_tokens(&g, &rg, m, end);
            prev = end;
        }
    }
    group_flush(&g, &rg);
    zero_neurons(&g, prev, hi);
}
