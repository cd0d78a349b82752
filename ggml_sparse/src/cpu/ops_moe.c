/*
 * ops_moe.c - the small mixture-of-experts kernels: top-k selection, id
 * lookup, routing weights and the weighted sum of the experts (contracts in
 * gs_moe.h; the expert product is matmul_id.c's).
 *
 * Kernels that read ids check all of them on every thread before writing
 * anything (a few ints per token), so all threads agree on failing without
 * synchronising; thread 0 reports the first bad one.
 */
#include "../gs_internal.h"

#include <math.h>

/* ---- top-k -------------------------------------------------------------- */
/* Whether (x, i) ranks before (y, j): larger value first, NaN after every
 * number, equal values (and NaNs among themselves) by ascending index. */
static inline bool ranks_before(float x, int32_t i, float y, int32_t j) {
    const bool nx = isnan(x), ny = isnan(y);
    if (nx || ny) return nx == ny ? i < j : ny;
    if (x != y) return x > y;
    return i < j;
}

void gs_cpu_op_top_k(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const int64_t n = a->ne[0];
    const int k = dst->op_params[0];
    int64_t r0, r1;
    gs_split_rows(a->ne[1], p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const float * x = (const float *) ((const uint8_t *) a->data + r * a->nb[1]);
        int32_t * out = (int32_t *) ((uint8_t *) dst->data + r * dst->nb[1]);
        int c = 0;   /* out[0..c) is sorted: the best c of x[0..j) */
        for (int64_t j = 0; j < n; j++) {
            const int32_t jj = (int32_t) j;
            if (c == k && !ranks_before(x[j], jj, x[out[k - 1]], out[k - 1])) continue;
            int pos = c < k ? c++ : k - 1;   /* the slot the new entry displaces or fills */
            while (pos > 0 && ranks_before(x[j], jj, x[out[pos - 1]], out[pos - 1])) {
                out[pos] = out[pos - 1];
                pos--;
            }
            out[pos] = jj;
        }
    }
}

/* ---- id lookup ---------------------------------------------------------- */
/* First index i of ids[0..n) with ids[i] outside [lo, hi), -1 when none. */
static int64_t first_bad_id(const int32_t * ids, int64_t n, int64_t lo, int64_t hi) {
    for (int64_t i = 0; i < n; i++) if (ids[i] < lo || ids[i] >= hi) return i;
    return -1;
}

void gs_cpu_op_map_ids(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * ids = dst->src[0];
    const gs_tensor * map = dst->src[1];
    const int64_t n = gs_nelements(ids), n_expert = map->ne[0];
    const int32_t * id = ids->data;
    const int32_t * mp = map->data;
    const int64_t bad = first_bad_id(id, n, -1, n_expert);
    if (bad >= 0) {
        if (p->ith == 0) {
            gs_compute_fail(p, GS_ERR_RUNTIME, "gs_map_ids: id %d at %lld of '%s' is outside -1..%lld",
                            id[bad], (long long) bad, ids->name, (long long) (n_expert - 1));
        }
        return;
    }
    int64_t i0, i1;
    gs_split_rows(n, p->ith, p->nth, &i0, &i1);
    int32_t * out = dst->data;
    for (int64_t i = i0; i < i1; i++) out[i] = id[i] < 0 ? -1 : mp[id[i]];
}

/* ---- routing weights ---------------------------------------------------- */
void gs_cpu_op_moe_weights(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * probs = dst->src[0];
    const gs_tensor * ids = dst->src[1];
    const int64_t n_expert = probs->ne[0], k = ids->ne[0], T = ids->ne[1];
    const bool norm = dst->op_params[0] != 0;
    float scale;
    memcpy(&scale, &dst->op_params[1], sizeof(float));
    const int32_t * id = ids->data;
    const int64_t bad = first_bad_id(id, k * T, 0, n_expert);
    if (bad >= 0) {
        if (p->ith == 0) {
            gs_compute_fail(p, GS_ERR_RUNTIME, "gs_moe_weights: expert id %d (slot %lld of token %lld) of '%s' is "
                            "outside 0..%lld", id[bad], (long long) (bad % k), (long long) (bad / k), ids->name,
                            (long long) (n_expert - 1));
        }
        return;
    }
    int64_t t0, t1;
    gs_split_rows(T, p->ith, p->nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        const float * pr = (const float *) ((const uint8_t *) probs->data + t * probs->nb[1]);
        const int32_t * it = id + t * k;
        float * w = (float *) dst->data + t * k;
        for (int64_t u = 0; u < k; u++) w[u] = pr[it[u]];
        if (norm) {
            /* llama.cpp: ggml_sum_rows (a double sum), ggml_clamp to the
             * smallest normal F16, ggml_div */
            double sum = 0.0;
            for (int64_t u = 0; u < k; u++) sum += (double) w[u];
            float s = (float) sum;
            s = s < 6.103515625e-5f ? 6.103515625e-5f : s;
            for (int64_t u = 0; u < k; u++) w[u] = w[u] / s;
        }
        if (scale != 1.0f) {
            for (int64_t u = 0; u < k; u++) w[u] = w[u] * scale;
        }
    }
}

/* ---- weighted sum of the experts ---------------------------------------- */
void gs_cpu_op_moe_sum(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * ex = dst->src[0];
    const gs_tensor * wt = dst->src[1];
    const int64_t E = ex->ne[0], k = ex->ne[1], T = ex->ne[2];
    int64_t e0, e1;
    gs_split_rows(E, p->ith, p->nth, &e0, &e1);
    for (int64_t t = 0; t < T; t++) {
        const uint8_t * base = (const uint8_t *) ex->data + t * ex->nb[2];
        const float * w = (const float *) wt->data + t * k;
        float * out = (float *) ((uint8_t *) dst->data + t * dst->nb[1]);
        const float * x0 = (const float *) base;
        for (int64_t e = e0; e < e1; e++) out[e] = x0[e] * w[0];
        for (int64_t u = 1; u < k; u++) {
            const float * x = (const float *) (base + u * ex->nb[1]);
            const float wu = w[u];
            for (int64_t e = e0; e < e1; e++) {
                const float prod = x[e] * wu;
                out[e] = out[e] + prod;
            }
        }
    }
}
