/*
 * ops_sparse_bundle.c - the fused sparse FFN over neuron bundles
 * (gs_sparse_ffn_bundle, contract in ggml_sparse.h): per active neuron, one
 * record holds its gate row, up row and ffn_down_t row back to back, and one
 * pass over the record computes both dots with the quantized activations,
 * the ReLU gating and the record's share of the output.
 *
 * Why: the unfused ops fetch three scattered rows per neuron from three
 * matrices (docs/sparse_cpu.md); a record is one contiguous fetch three
 * times as long, which the prefetcher streams.
 *
 * Threads: per token, the active-neuron list is cut into GS_SPARSE_CHUNKS contiguous
 * chunks of (nearly) equal length, a number that does not depend on the
 * thread count. Each chunk accumulates its own partial output, from zero,
 * neuron after neuron in ascending order; threads take whole chunks. After
 * a barrier, threads split the output elements and sum the partials in
 * chunk order. The result therefore does not depend on the thread count.
 * Partials are double-buffered by token parity, so one barrier per token
 * suffices (a thread can only write a buffer again after every thread has
 * passed the next token's barrier, i.e. finished reducing from it).
 *
 * A neuron whose activation is 0 adds nothing (so its up row is not dotted
 * when relu(gate) is 0, and its down row not added).
 *
 * Kernels: Q4_0 on AVX-512 has its own (vec_avx512_bundle.c: the
 * activation's per-block terms prepared once per token, bit-identical to
 * the generic ones); other types use the type's 4-row sparse dot kernel
 * where the level has one (bit-identical to vec_dot), else vec_dot; the
 * down rows go through the type's SIMD row axpy kernel (4 rows per pass
 * over the partial), else dequantize and add (the scalar reference).
 */
#include "sparse.h"

#define GROUP 4           /* neurons whose down rows are added in one pass  */
#define PREFETCH_AHEAD 4  /* records requested this many neurons ahead      */

size_t gs_cpu_sparse_ffn_bundle_work_size(const gs_tensor * dst, int n_threads) {
    return gs_sparse_fused_work_size(dst->src[0]->type, dst->src[1], n_threads);
}

typedef struct {
    int E;                    /* n_embd: elements of each part of a record */
    const uint8_t * a;        /* records, rec bytes apart                  */
    size_t rec, part;         /* record and part (one row) sizes in bytes  */
    const int32_t * skip;     /* skip mask or NULL                         */
    bool both_relu;           /* bamboo: relu(up) too                      */
    gs_vec_dot_fn vec_dot;
    gs_sparse_dots_fn dots;   /* 4 scattered rows per call, or NULL       */
    gs_axpy_rows_fn axpy;     /* SIMD row axpy, or NULL                   */
    gs_to_float_fn to_float;
    float * tmp;              /* this thread's dequantization row          */
    void * aux;               /* Q4_0 AVX-512: the token's activation terms
                               * (in tmp's place), else NULL               */
} bundle_args;

static inline float relu(float x) { return x > 0.0f ? x : 0.0f; }

static void dots(const bundle_args * g, int nr, float * s, const uint8_t * const * x, const void * q,
                 gs_pf_cursor * pf) {
    if (g->aux) {
        gs_bundle_dots_q4_0_avx512(g->E, nr, s, x, q, g->aux, pf);
        return;
    }
    if (g->dots) {
        g->dots(g->E, nr, s, x, q);
        return;
    }
    for (int r = 0; r < nr; r++) g->vec_dot(g->E, &s[r], x[r], q);
}

/* The nr records rec[r]: gate dots; up dots of the neurons whose relu(gate)
 * is not 0; y += act * down row for those whose act is not 0, in record
 * order. (A ReLU FFN's neuron with act 0 adds nothing: its up and down rows
 * are not needed. Predicted neurons whose gate is <= 0, and half of all
 * neurons with no index, end there.) The Q4_0 AVX-512 kernels advance pf
 * as they go. */
static void add_group(const bundle_args * g, int nr, const uint8_t * const * rec, const void * q, float * y,
                      gs_pf_cursor * pf) {
    const uint8_t * x[GROUP];
    float gv[GROUP], uv[GROUP], act[GROUP];
    dots(g, nr, gv, rec, q, pf);
    int nu = 0;
    for (int r = 0; r < nr; r++) {
        if (gv[r] > 0.0f) {
            gv[nu] = gv[r];
            x[nu++] = rec[r] + g->part;
        }
    }
    if (nu == 0) return;
    dots(g, nu, uv, x, q, pf);
    int na = 0;
    for (int r = 0; r < nu; r++) {
        const float a = gv[r] * (g->both_relu ? relu(uv[r]) : uv[r]);
        if (a != 0.0f) {
            act[na] = a;
            x[na++] = x[r] + g->part;
        }
    }
    if (na == 0) return;
    if (g->aux) {
        gs_bundle_axpy_q4_0_avx512(g->E, na, act, x, y, pf);
        return;
    }
    if (g->axpy) {
        g->axpy(g->E, na, act, x, y);
        return;
    }
    for (int r = 0; r < na; r++) {
        g->to_float(x[r], g->tmp, g->E);
        for (int i = 0; i < g->E; i++) y[i] += act[r] * g->tmp[i];
    }
}

/* y = the FFN output of list entries [e0, e1) (skipped neurons left out).
 * Records are requested PREFETCH_AHEAD entries ahead; with the Q4_0 AVX-512
 * kernels, the GROUP entries after a group's last one, spread over the
 * group's computation. */
static void chunk(const bundle_args * g, const gs_sparse_list * l, int64_t e0, int64_t e1, const void * q, float * y) {
    memset(y, 0, (size_t) g->E * sizeof(float));
    const uint8_t * rec[GROUP];
    int nr = 0;
    gs_pf_cursor pf = { .bytes = 3 * g->part };
    for (int64_t e = e0; e < e1; e++) {
        if (!g->aux && e + PREFETCH_AHEAD < e1) gs_prefetch(g->a + gs_sparse_id(l, e + PREFETCH_AHEAD) * g->rec, 3 * g->part);
        const int64_t m = gs_sparse_id(l, e);
        if (g->skip && g->skip[m]) continue;
        rec[nr++] = g->a + m * g->rec;
        if (nr == GROUP) {
            pf.i = 0;
            pf.off = 0;
            pf.n = 0;
            for (int64_t f = e + 1; f < e1 && pf.n < GROUP; f++) pf.p[pf.n++] = g->a + gs_sparse_id(l, f) * g->rec;
            add_group(g, nr, rec, q, y, &pf);
            nr = 0;
        }
    }
    pf.n = 0;
    if (nr) add_group(g, nr, rec, q, y, &pf);
}

/* out[j] = the sum of the GS_SPARSE_CHUNKS partials (stride floats apart) in chunk
 * order, for j in [j0, j1) (multiples of 16), the partials in
 * GS_BUNDLE_PERM order: sums of 16 contiguous elements, then stored
 * transposed. */
static void reduce_permuted(const float * part, size_t stride, int64_t j0, int64_t j1, float * out) {
    for (int64_t j = j0; j < j1; j += 16) {
        float s[16];
        for (int k = 0; k < 16; k++) s[k] = part[j + k];
        for (int c = 1; c < GS_SPARSE_CHUNKS; c++) {
            for (int k = 0; k < 16; k++) s[k] += part[(size_t) c * stride + (size_t) j + (size_t) k];
        }
        for (int k = 0; k < 16; k++) out[j + k] = s[GS_BUNDLE_PERM(k)];
    }
}

void gs_cpu_op_sparse_ffn_bundle(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const gs_tensor * h = dst->src[1];
    const gs_tensor * idx = dst->src[2];
    const int64_t E = h->ne[0], M = a->ne[1], N = h->ne[1];
    const gs_type vt = gs_get_type_traits(a->type)->vec_dot_type;
    const size_t q_row = gs_type_row_size(vt, E), row = gs_sparse_align((size_t) E * sizeof(float));
    uint8_t * wq = p->wdata;
    float * partials = (float *) (wq + gs_sparse_q_bytes(dst->src[0]->type, h));
    if (!gs_sparse_begin(p, h, vt, wq, idx, M)) return;

    gs_cpu_info info;
    gs_cpu_get_info(&info);
    const bool q4_avx512 = info.level >= GS_IMPL_AVX512 && a->type == GS_TYPE_Q4_0;
    float * tmp = (float *) ((uint8_t *) partials + (2 * GS_SPARSE_CHUNKS + (size_t) p->ith) * row);
    assert(GS_BUNDLE_AUX_BYTES(E) <= row);   /* aux fits in tmp's row */
    const bundle_args g = {
        .E = (int) E, .a = a->data, .rec = a->nb[1], .part = gs_type_row_size(a->type, E),
        .skip = dst->src[3] ? (const int32_t *) dst->src[3]->data : NULL, .both_relu = dst->op_params[0] != 0,
        .vec_dot = gs_cpu_funcs(a->type)->vec_dot,
        .dots = info.level >= GS_IMPL_AVX512 ? gs_sparse_dots_avx512[a->type] : NULL,
        .axpy = gs_sparse_axpy_rows(a->type), .to_float = gs_get_type_traits(a->type)->to_float,
        .tmp = tmp, .aux = q4_avx512 ? tmp : NULL,
    };
    int64_t c0, c1, j0, j1;
    gs_split_rows(GS_SPARSE_CHUNKS, p->ith, p->nth, &c0, &c1);
    if (g.aux) {   /* whole 16-element groups of the permuted partials */
        gs_split_rows(E / 16, p->ith, p->nth, &j0, &j1);
        j0 *= 16;
        j1 *= 16;
    } else {
        gs_split_rows(E, p->ith, p->nth, &j0, &j1);
    }
    for (int64_t t = 0; t < N; t++) {
        const gs_sparse_list l = gs_sparse_list_of(idx, M, t);
        float * part = (float *) ((uint8_t *) partials + (size_t) (t & 1) * GS_SPARSE_CHUNKS * row);
        const void * q = wq + t * q_row;
        if (g.aux && c0 < c1) gs_bundle_prep_q4_0_avx512((int) E, q, g.aux);
        for (int64_t c = c0; c < c1; c++) {
            int64_t e0, e1;
            gs_split_rows(l.n, (int) c, GS_SPARSE_CHUNKS, &e0, &e1);
            chunk(&g, &l, e0, e1, q, (float *) ((uint8_t *) part + (size_t) c * row));
        }
        gs_barrier(p);
        float * out = (float *) ((uint8_t *) dst->data + t * dst->nb[1]);
        if (g.aux) {
            reduce_permuted(part, row / sizeof(float), j0, j1, out);
            continue;
        }
        gs_sparse_reduce_chunks(part, row / sizeof(float), j0, j1, out);
    }
}
