/*
 * sparse.h - shared by the neuron-sparse CPU kernels (ops_sparse*.c): which
 * neurons an op visits, and the SIMD row axpy kernels.
 */
#ifndef GS_CPU_SPARSE_H
#define GS_CPU_SPARSE_H

#include "../gs_internal.h"

/* One token's active neurons: ids[0..n), ascending; ids NULL: every neuron
 * 0..n-1 (an op without an index). */
typedef struct {
    const int32_t * ids;
    int64_t n;
} gs_sparse_list;

/* Called by all threads of an op: checks every column of idx {M + 1, N}
 * (NULL: nothing to check). A bad column is reported (gs_compute_fail) and
 * every thread gets false. */
bool gs_sparse_check_index(const gs_compute_params * p, const gs_tensor * idx, int64_t M);
/* The start of the sparse ops that take activations x F32 {K, N}: this
 * thread quantizes its share of x's rows to vt (rows of gs_type_row_size(vt,
 * K) bytes back to back at wq), then after a barrier every thread checks idx
 * as gs_sparse_check_index does (false: the op failed, return). */
bool gs_sparse_begin(const gs_compute_params * p, const gs_tensor * x, gs_type vt, uint8_t * wq,
                     const gs_tensor * idx, int64_t M);
/* Token t's list (idx NULL: all M neurons). */
gs_sparse_list gs_sparse_list_of(const gs_tensor * idx, int64_t M, int64_t t);

static inline int64_t gs_sparse_id(const gs_sparse_list * l, int64_t e) {
    return l->ids ? l->ids[e] : e;
}

/* Ask for `bytes` at p to be brought into the L2 cache: rows of an index
 * are scattered, so the hardware prefetcher cannot guess the next one.
 * (Measured: requests into L1 stall on its few fill buffers and help far
 * less than requests into L2.) */
static inline void gs_prefetch(const void * p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch((const uint8_t *) p + o, 0, 2);
}

/* The fused FFN ops (ops_sparse_bundle.c, ops_sparse_up_down.c) cut each
 * token's active list into this many chunks of consecutive neurons, a split
 * that does not depend on the thread count; each chunk sums into its own
 * partial output, and the partials are then added in chunk order. */
#define GS_SPARSE_CHUNKS 8

static inline size_t gs_sparse_align(size_t n) {
    return (n + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN;
}

/* Their scratch: the activations h {E, N} quantized to the vec_dot_type of
 * weight type w (gs_sparse_q_bytes), then 2 x GS_SPARSE_CHUNKS partial
 * outputs of E floats (double-buffered by token parity) and one float row
 * per thread (gs_sparse_fused_work_size). */
static inline size_t gs_sparse_q_bytes(gs_type w, const gs_tensor * h) {
    const gs_type vt = gs_get_type_traits(w)->vec_dot_type;
    return gs_sparse_align(gs_type_row_size(vt, h->ne[0]) * (size_t) h->ne[1]);
}

static inline size_t gs_sparse_fused_work_size(gs_type w, const gs_tensor * h, int n_threads) {
    const size_t row = gs_sparse_align((size_t) h->ne[0] * sizeof(float));
    return gs_sparse_q_bytes(w, h) + (2 * GS_SPARSE_CHUNKS + (size_t) n_threads) * row;
}

/* out[j] = the GS_SPARSE_CHUNKS partials (stride floats apart) summed in
 * chunk order, for j in [j0, j1). */
static inline void gs_sparse_reduce_chunks(const float * part, size_t stride, int64_t j0, int64_t j1,
                                           float * out) {
    for (int64_t j = j0; j < j1; j++) {
        float s = part[j];
        for (int c = 1; c < GS_SPARSE_CHUNKS; c++) s += part[(size_t) c * stride + (size_t) j];
        out[j] = s;
    }
}

/* Prefetching a token's scattered rows, one of two ways chosen from the
 * mean gap between its active rows (measured, docs/sparse_cpu.md):
 * - rows: each active row is requested whole, some active rows ahead
 *   (rows over GS_STREAM_GAP bytes or wide gaps: 7B rows of 2304 bytes,
 *   90% sparsity);
 * - stream: every line up to GS_STREAM_AHEAD bytes past the current row is
 *   requested, inactive rows included, so the matrix is read as one
 *   sequential stream (short rows at moderate sparsity: SmolLM2's 360-byte
 *   rows at 50% take 29 us from DRAM this way against 49 us row by row,
 *   the dense product 33 us; for 7B rows streaming was slower). */
#define GS_STREAM_AHEAD 8192    /* bytes requested past the current row    */
#define GS_STREAM_GAP 1024      /* stream when the mean gap is below this  */

typedef struct {
    const uint8_t * base;     /* row 0                                     */
    size_t stride, bytes;     /* row stride, bytes of a row to request     */
    size_t pos, end;          /* stream: next line to request, the end     */
    bool stream;
} gs_rows_prefetch;

/* For a token with n of M rows active. */
static inline gs_rows_prefetch gs_rows_prefetch_init(const uint8_t * base, size_t stride, size_t bytes,
                                                     int64_t M, int64_t n) {
    const bool stream = n > 0 && bytes <= GS_STREAM_GAP &&
                        stride * (size_t) (M - n) < (size_t) GS_STREAM_GAP * (size_t) n;
    const size_t end = M > 0 ? (size_t) (M - 1) * stride + bytes : 0;   /* the last row's end */
    return (gs_rows_prefetch) { .base = base, .stride = stride, .bytes = bytes, .pos = 0,
                                .end = end, .stream = stream };
}

/* Called as row m is about to be computed; `ahead` is the active row some
 * entries later (or -1: none), requested whole in row mode. */
static inline void gs_rows_prefetch_at(gs_rows_prefetch * pf, int64_t m, int64_t ahead) {
    if (!pf->stream) {
        if (ahead >= 0) gs_prefetch(pf->base + (size_t) ahead * pf->stride, pf->bytes);
        return;
    }
    const size_t at = (size_t) m * pf->stride;
    size_t target = at + GS_STREAM_AHEAD;
    if (target > pf->end) target = pf->end;
    if (pf->pos < at) pf->pos = at & ~(size_t) 63;
    for (; pf->pos < target; pf->pos += 64) __builtin_prefetch(pf->base + pf->pos, 0, 2);
}

/* y[0..n) += a[r] * x[r][0..n) for the rows r = 0..nr-1 of one weight type,
 * added one after the other (so per element in row order); each x[r] is a
 * slice of a row starting at a block boundary, n a multiple of the block
 * size. */
typedef void (*gs_axpy_rows_fn)(int n, int nr, const float * a, const uint8_t * const * x, float * y);

/* Per-type row axpy kernels of the SIMD levels, NULL where a level has none
 * (vec_avx2_axpy.c, vec_avx512_axpy.c). */
extern const gs_axpy_rows_fn gs_axpy_rows_avx2[GS_TYPE_COUNT];
extern const gs_axpy_rows_fn gs_axpy_rows_avx512[GS_TYPE_COUNT];
/* The best of those for `type` on this CPU, NULL when none (ops_sparse_axpy.c). */
gs_axpy_rows_fn gs_sparse_axpy_rows(gs_type type);

/* s[i] = dot(weight row x[i], activation row y) for i = 0..nr-1,
 * 1 <= nr <= 4, scattered rows of one type with activations in its
 * vec_dot_type; each bit-identical to the type's vec_dot
 * (vec_avx512_tile.c: its micro-kernel; NULL for types without one). */
typedef void (*gs_sparse_dots_fn)(int n, int nr, float * s, const uint8_t * const * x, const void * y);
extern const gs_sparse_dots_fn gs_sparse_dots_avx512[GS_TYPE_COUNT];

/* Records to bring into L2 while a kernel computes: the kernel calls
 * gs_pf_step once or twice per block, which requests the next 64 bytes
 * (records p[0..n), bytes each, front to back), so the requests are spread
 * over the computation instead of issued in one burst. */
typedef struct {
    const uint8_t * p[4];     /* up to 4 records */
    int n, i;
    size_t off, bytes;
} gs_pf_cursor;

static inline void gs_pf_step(gs_pf_cursor * c) {
    if (c->i < c->n) {
        __builtin_prefetch(c->p[c->i] + c->off, 0, 2);
        c->off += 64;
        if (c->off >= c->bytes) {
            c->off = 0;
            c->i++;
        }
    }
}

/* Q4_0 kernels of the fused op over neuron bundles (vec_avx512_bundle.c),
 * bit-identical to gs_sparse_dots_avx512 / gs_axpy_rows_avx512 of Q4_0
 * (the axpy's y permuted, below).
 * prep: from one token's Q8_0 activation row y (n elements), the per-block
 * terms the dots reuse for every row, into aux (GS_BUNDLE_AUX_BYTES(n)
 * bytes, 32-byte aligned); dots: as gs_sparse_dots_fn, with that aux. Both
 * kernels advance pf (two requests per block). */
#define GS_BUNDLE_AUX_BYTES(n) ((size_t) (n) / 32 * 36)
void gs_bundle_prep_q4_0_avx512(int n, const void * y, void * aux);
void gs_bundle_dots_q4_0_avx512(int n, int nr, float * s, const uint8_t * const * x, const void * y,
                                const void * aux, gs_pf_cursor * pf);
void gs_bundle_axpy_q4_0_avx512(int n, int nr, const float * a, const uint8_t * const * x, float * y,
                                gs_pf_cursor * pf);
/* ... whose y is in a permuted order: element j of the row sits at
 * GS_BUNDLE_PERM(j) (a 4 x 4 transpose inside each 16 elements; its own
 * inverse). */
#define GS_BUNDLE_PERM(j) (((j) & ~(int64_t) 15) | (((j) & 3) << 2) | (((j) >> 2) & 3))

/* What GS_OP_SPARSE_INDEX compares with its threshold (op_params[1]). */
typedef enum {
    GS_INDEX_SCORE = 0,       /* predictor score s: active iff s >= threshold   */
    GS_INDEX_MAGNITUDE = 1    /* activation a: active iff |a| >= threshold      */
} gs_index_mode;

/* Scan s[0..n) for the active entries (NaN never is): writes base + i for
 * each, ascending, to ids (ids NULL: only counts) and returns their count.
 * Scalar reference in ops_sparse_index.c; SIMD in vec_*_index.c, identical
 * lists. */
typedef int64_t (*gs_index_scan_fn)(const float * s, int64_t n, float thr, bool magnitude, int32_t base,
                                    int32_t * ids);
int64_t gs_index_scan_avx2(const float * s, int64_t n, float thr, bool magnitude, int32_t base, int32_t * ids);
int64_t gs_index_scan_avx512(const float * s, int64_t n, float thr, bool magnitude, int32_t base, int32_t * ids);

#endif /* GS_CPU_SPARSE_H */
