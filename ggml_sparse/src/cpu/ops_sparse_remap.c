/*
 * ops_sparse_remap.c - an active-neuron index restricted to a slice of the
 * neurons, in the slice's compact ids (gs_sparse_index_remap; the index
 * format in ggml_sparse.h). src[0] is the index idx {M + 1, N}, src[1] the
 * map {M}; the result holds n_out + 1 values per token.
 *
 * Every thread checks the whole map and the whole index (a few thousand ints
 * each), so all agree on failing without synchronising; then the threads
 * take whole tokens: a token's output is its active ids looked up in the map,
 * the -1 entries dropped, in the order of the ids (ascending, as the map's
 * entries ascend).
 */
#include "sparse.h"

/* First bad entry of map[0..M) for n_out compact ids, -1 when none. */
static int64_t bad_map_entry(const int32_t * map, int64_t M, int64_t n_out) {
    int64_t last = -1;
    for (int64_t m = 0; m < M; m++) {
        const int64_t v = map[m];
        if (v == -1) continue;
        if (v < -1 || v >= n_out || v <= last) return m;
        last = v;
    }
    return -1;
}

void gs_cpu_op_sparse_index_remap(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * idx = dst->src[0];
    const gs_tensor * map = dst->src[1];
    const int64_t M = idx->ne[0] - 1, N = idx->ne[1], n_out = dst->ne[0] - 1;
    const int32_t * mp = map->data;
    const int64_t bad = bad_map_entry(mp, M, n_out);
    if (bad >= 0) {
        if (p->ith == 0) {
            gs_compute_fail(p, GS_ERR_RUNTIME, "sparse index map '%s': entry %lld is %d; entries must be -1 or "
                            "compact ids in [0, %lld), increasing with the neuron id", map->name, (long long) bad,
                            mp[bad], (long long) n_out);
        }
        return;
    }
    if (!gs_sparse_check_index(p, idx, M)) return;
    int64_t t0, t1;
    gs_split_rows(N, p->ith, p->nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        const int32_t * col = (const int32_t *) idx->data + t * (M + 1);
        int32_t * out = (int32_t *) dst->data + t * (n_out + 1);
        int32_t c = 0;
        for (int32_t e = 1; e <= col[0]; e++) {
            const int32_t v = mp[col[e]];
            if (v >= 0) out[1 + c++] = v;
        }
        out[0] = c;
    }
}
