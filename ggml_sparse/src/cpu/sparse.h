/*
 * sparse.h - shared by the neuron-sparse CPU kernels (ops_sparse*.c): which
 * neurons an op visits, and the SIMD row axpy kernels.
 */
#ifndef GS_CPU_SPARSE_H
#define GS_CPU_SPARSE_H

#include "../gs_internal.h"

/* The neurons a sparse op visits, in ascending id order, and which tokens
 * need each of them. Built by gs_sparse_plan from the op's index and skip
 * mask (see ggml_sparse.h for their format). */
typedef struct {
    const int32_t * ids;     /* visited neuron ids, ascending; NULL: 0..n-1     */
    int64_t n;               /* number of visited neurons                       */
    const int32_t * skip;    /* skip mask still to apply to ids (or NULL)        */
    const uint64_t * tokens; /* NULL: every token needs every visited neuron;
                                else `words` words per neuron id, bit t of
                                tokens[m * words + t / 64] set = token t needs m */
    int64_t words;
} gs_sparse_plan_t;

/* Scratch bytes gs_sparse_plan needs for M neurons, n_tokens tokens and
 * n_threads threads (0 when one token or no index). */
size_t gs_sparse_plan_scratch(int64_t M, int64_t n_tokens, int n_threads, bool has_idx);

/* Called by all threads of an op: checks the index (reporting a bad one with
 * gs_compute_fail) and fills *plan. idx: I32 {M + 1, n_tokens} or NULL;
 * skip: I32 {M} or NULL. With several tokens it builds their union in
 * `scratch` (gs_sparse_plan_scratch bytes, shared) and synchronises the
 * threads. Returns false, on every thread, when the index is bad. */
bool gs_sparse_plan(const gs_compute_params * p, const gs_tensor * idx, const gs_tensor * skip,
                    int64_t M, int64_t n_tokens, void * scratch, gs_sparse_plan_t * plan);

static inline int64_t gs_sparse_plan_id(const gs_sparse_plan_t * plan, int64_t e) {
    return plan->ids ? plan->ids[e] : e;
}

static inline bool gs_sparse_plan_skips(const gs_sparse_plan_t * plan, int64_t m) {
    return plan->skip && plan->skip[m] != 0;
}

/* Ask for `bytes` at p to be brought into the L2 cache: rows of an index
 * are scattered, so the hardware prefetcher cannot guess the next one.
 * (Measured: requests into L1 stall on its few fill buffers and help far
 * less than requests into L2.) */
static inline void gs_prefetch(const void * p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch((const uint8_t *) p + o, 0, 2);
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

/* s[r] = dot(weight row x[r], activation row y) for r = 0..nr-1, 1 <= nr <= 4:
 * scattered rows of one type, each result bit-identical to the type's
 * vec_dot (vec_avx512_sparse.c; NULL for types without one). */
typedef void (*gs_sparse_dots_fn)(int n, int nr, float * s, const uint8_t * const * x, const void * y);
extern const gs_sparse_dots_fn gs_sparse_dots_avx512[GS_TYPE_COUNT];

#endif /* GS_CPU_SPARSE_H */
