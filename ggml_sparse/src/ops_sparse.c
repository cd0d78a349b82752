/*
 * ops_sparse.c - constructors of the neuron-sparse FFN ops (contracts and
 * the index format in ggml_sparse.h). No computation.
 */
#include "gs_internal.h"
#include "cpu/sparse.h"

#include <math.h>
#include <stdio.h>

static bool is_2d(const gs_tensor * t) {
    return t->ne[2] == 1 && t->ne[3] == 1;
}

/* F32 activations {n, n_tokens} whose rows are contiguous. */
static gs_status check_activations(const char * op, const gs_tensor * x) {
    if (x->type != GS_TYPE_F32) return gs_op_type_error(op, x, "f32");
    if (x->nb[0] != sizeof(float) || !is_2d(x)) {
        return gs_op_shape_error(op, x, "activations must be 2-D with contiguous rows");
    }
    return GS_OK;
}

/* Optional index {M + 1, n_tokens} and skip mask {M} of an M-neuron op. */
static gs_status check_idx_skip(const char * op, const gs_tensor * idx, const gs_tensor * skip,
                                int64_t M, int64_t n_tokens) {
    if (idx) {
        if (idx->type != GS_TYPE_I32) return gs_op_type_error(op, idx, "i32");
        if (!gs_is_contiguous(idx) || !is_2d(idx) || idx->ne[0] != M + 1 || idx->ne[1] != n_tokens) {
            char why[96];
            snprintf(why, sizeof(why), "index must be contiguous {%lld, %lld}", (long long) (M + 1),
                     (long long) n_tokens);
            return gs_op_shape_error(op, idx, why);
        }
    }
    if (skip) {
        if (skip->type != GS_TYPE_I32) return gs_op_type_error(op, skip, "i32");
        if (!gs_is_contiguous(skip) || gs_nelements(skip) != M) {
            return gs_op_shape_error(op, skip, "skip mask must be contiguous with one value per neuron");
        }
    }
    return GS_OK;
}

static gs_status new_sparse_node(gs_context * ctx, gs_op op, gs_type type, int64_t ne0, int64_t ne1,
                                 gs_tensor ** out) {
    const int64_t ne[2] = { ne0, ne1 };
    gs_tensor * t;
    gs_status st = gs_tensor_alloc_meta(ctx, type, 2, ne, &t);
    if (st) return st;
    t->op = op;
    *out = t;
    return GS_OK;
}

static gs_status new_index_node(gs_context * ctx, const char * op, gs_tensor * src, float threshold,
                                gs_index_mode mode, gs_tensor ** out) {
    GS_CHECK_ARG(ctx && out && src, "%s: NULL argument", op);
    gs_status st = check_activations(op, src);
    if (st) return st;
    if (src->ne[0] >= INT32_MAX) return gs_op_shape_error(op, src, "too many neurons for an I32 index");
    st = new_sparse_node(ctx, GS_OP_SPARSE_INDEX, GS_TYPE_I32, src->ne[0] + 1, src->ne[1], out);
    if (st) return st;
    (*out)->src[0] = src;
    memcpy(&(*out)->op_params[0], &threshold, sizeof(float));
    (*out)->op_params[1] = mode;
    return GS_OK;
}

gs_status gs_sparse_index(gs_context * ctx, gs_tensor * score, float threshold, gs_tensor ** out) {
    return new_index_node(ctx, "gs_sparse_index", score, threshold, GS_INDEX_SCORE, out);
}

gs_status gs_sparse_index_abs(gs_context * ctx, gs_tensor * act, float threshold, gs_tensor ** out) {
    if (isnan(threshold)) return gs_set_error(GS_ERR_INVALID_ARG, "gs_sparse_index_abs: threshold is NaN");
    return new_index_node(ctx, "gs_sparse_index_abs", act, threshold, GS_INDEX_MAGNITUDE, out);
}

gs_status gs_sparse_predict(gs_context * ctx, gs_tensor * fc1, gs_tensor * fc2, gs_tensor * x,
                            float threshold, gs_tensor ** out) {
    GS_CHECK_ARG(ctx && out && fc1 && fc2 && x, "gs_sparse_predict: NULL argument");
    if (fc2->ne[0] != fc1->ne[1]) {
        return gs_op_shape_error("gs_sparse_predict", fc2, "fc2's ne0 must equal fc1's ne1 (the hidden size H)");
    }
    gs_tensor * h, * r, * score;
    gs_status st = gs_mul_mat(ctx, fc1, x, &h);
    if (!st) st = gs_unary(ctx, h, GS_UNARY_RELU, &r);
    if (!st) st = gs_mul_mat(ctx, fc2, r, &score);
    if (!st) st = gs_sparse_index(ctx, score, threshold, out);
    return st;
}

gs_status gs_sparse_index_remap(gs_context * ctx, gs_tensor * idx, gs_tensor * map, int64_t n_out,
                                gs_tensor ** out) {
    static const char * op = "gs_sparse_index_remap";
    GS_CHECK_ARG(ctx && out && idx && map, "%s: NULL argument", op);
    if (n_out < 0 || n_out >= INT32_MAX) {
        return gs_set_error(GS_ERR_INVALID_ARG, "%s: n_out is %lld, must be in [0, %d)", op, (long long) n_out,
                            INT32_MAX);
    }
    if (idx->type != GS_TYPE_I32) return gs_op_type_error(op, idx, "i32");
    if (map->type != GS_TYPE_I32) return gs_op_type_error(op, map, "i32");
    if (!gs_is_contiguous(idx) || !is_2d(idx) || idx->ne[0] < 2) {
        return gs_op_shape_error(op, idx, "index must be contiguous {M + 1, n_tokens} with M >= 1");
    }
    if (!gs_is_contiguous(map) || gs_nelements(map) != idx->ne[0] - 1) {
        return gs_op_shape_error(op, map, "map must be contiguous with one value per neuron (the index's M)");
    }
    gs_status st = new_sparse_node(ctx, GS_OP_SPARSE_INDEX_REMAP, GS_TYPE_I32, n_out + 1, idx->ne[1], out);
    if (st) return st;
    (*out)->src[0] = idx;
    (*out)->src[1] = map;
    return GS_OK;
}

gs_status gs_mul_mat_sparse(gs_context * ctx, gs_tensor * a, gs_tensor * b, gs_tensor * idx,
                            gs_tensor * skip, gs_tensor ** out) {
    static const char * op = "gs_mul_mat_sparse";
    GS_CHECK_ARG(ctx && out && a && b, "%s: NULL argument", op);
    const gs_type_traits * ta = gs_get_type_traits(a->type);
    if (!ta || !gs_get_type_traits(ta->vec_dot_type) || !gs_cpu_funcs(a->type)->vec_dot) {
        return gs_op_type_error(op, a, "a weight type with a dot product kernel");
    }
    if (!is_2d(a) || a->nb[0] != ta->type_size) return gs_op_shape_error(op, a, "weights must be 2-D with contiguous rows");
    gs_status st = check_activations(op, b);
    if (st) return st;
    if (a->ne[0] != b->ne[0]) return gs_op_shape_error(op, b, "ne0 differs from the weights' ne0");
    if (b->ne[0] % gs_get_type_traits(ta->vec_dot_type)->blck_size) {
        return gs_op_shape_error(op, b, "ne0 is not a multiple of the activation block size");
    }
    st = check_idx_skip(op, idx, skip, a->ne[1], b->ne[1]);
    if (st) return st;
    st = new_sparse_node(ctx, GS_OP_MUL_MAT_SPARSE, GS_TYPE_F32, a->ne[1], b->ne[1], out);
    if (st) return st;
    (*out)->src[0] = a;
    (*out)->src[1] = b;
    (*out)->src[2] = idx;
    (*out)->src[3] = skip;
    return GS_OK;
}

gs_status gs_axpy_sparse(gs_context * ctx, gs_tensor * a, gs_tensor * act, gs_tensor * idx,
                         gs_tensor * skip, gs_tensor ** out) {
    static const char * op = "gs_axpy_sparse";
    GS_CHECK_ARG(ctx && out && a && act, "%s: NULL argument", op);
    const gs_type_traits * ta = gs_get_type_traits(a->type);
    if (!ta || !ta->to_float || a->type == GS_TYPE_Q8_1 || a->type == GS_TYPE_Q8_K) {
        return gs_op_type_error(op, a, "a float or weight type");
    }
    if (!is_2d(a) || a->nb[0] != ta->type_size) return gs_op_shape_error(op, a, "weights must be 2-D with contiguous rows");
    gs_status st = check_activations(op, act);
    if (st) return st;
    if (act->ne[0] != a->ne[1]) return gs_op_shape_error(op, act, "ne0 must equal the weights' row count (n_ff)");
    st = check_idx_skip(op, idx, skip, a->ne[1], act->ne[1]);
    if (st) return st;
    st = new_sparse_node(ctx, GS_OP_AXPY_SPARSE, GS_TYPE_F32, a->ne[0], act->ne[1], out);
    if (st) return st;
    (*out)->src[0] = a;
    (*out)->src[1] = act;
    (*out)->src[2] = idx;
    (*out)->src[3] = skip;
    return GS_OK;
}

gs_status gs_sparse_ffn_bundle(gs_context * ctx, gs_tensor * bundle, gs_tensor * h, gs_tensor * idx,
                               gs_tensor * skip, bool both_relu, gs_tensor ** out) {
    static const char * op = "gs_sparse_ffn_bundle";
    GS_CHECK_ARG(ctx && out && bundle && h, "%s: NULL argument", op);
    const gs_type_traits * ta = gs_get_type_traits(bundle->type);
    if (!ta || !ta->to_float || !gs_get_type_traits(ta->vec_dot_type) || !gs_cpu_funcs(bundle->type)->vec_dot) {
        return gs_op_type_error(op, bundle, "a weight type with a dot product kernel");
    }
    if (!is_2d(bundle) || bundle->nb[0] != ta->type_size) {
        return gs_op_shape_error(op, bundle, "bundle must be 2-D with contiguous records");
    }
    gs_status st = check_activations(op, h);
    if (st) return st;
    const int64_t E = h->ne[0];
    if (bundle->ne[0] != 3 * E) return gs_op_shape_error(op, bundle, "ne0 must be 3 x n_embd (gate, up, down rows)");
    if (E % ta->blck_size || E % gs_get_type_traits(ta->vec_dot_type)->blck_size) {
        return gs_op_shape_error(op, h, "ne0 is not a multiple of the weight and activation block sizes");
    }
    st = check_idx_skip(op, idx, skip, bundle->ne[1], h->ne[1]);
    if (st) return st;
    st = new_sparse_node(ctx, GS_OP_SPARSE_FFN_BUNDLE, GS_TYPE_F32, E, h->ne[1], out);
    if (st) return st;
    (*out)->src[0] = bundle;
    (*out)->src[1] = h;
    (*out)->src[2] = idx;
    (*out)->src[3] = skip;
    (*out)->op_params[0] = both_relu;
    return GS_OK;
}

/* A weight matrix the sparse FFN ops read by rows: a type with a dot product
 * kernel (up) or a dequantization (down_t), 2-D, each row contiguous (rows
 * may be any nb[1] apart). */
static gs_status check_rows(const char * op, const gs_tensor * w, bool dot) {
    const gs_type_traits * tw = gs_get_type_traits(w->type);
    if (!tw || !tw->to_float || w->type == GS_TYPE_Q8_1 || w->type == GS_TYPE_Q8_K ||
        (dot && (!gs_get_type_traits(tw->vec_dot_type) || !gs_cpu_funcs(w->type)->vec_dot))) {
        return gs_op_type_error(op, w, dot ? "a weight type with a dot product kernel" : "a float or weight type");
    }
    if (!is_2d(w) || w->nb[0] != tw->type_size || w->nb[1] < gs_type_row_size(w->type, w->ne[0])) {
        return gs_op_shape_error(op, w, "weights must be 2-D with contiguous rows");
    }
    return GS_OK;
}

gs_status gs_sparse_ffn_up_down(gs_context * ctx, gs_tensor * up, gs_tensor * down_t, gs_tensor * act,
                                gs_tensor * h, gs_tensor * idx, gs_tensor * skip, gs_tensor ** out) {
    static const char * op = "gs_sparse_ffn_up_down";
    GS_CHECK_ARG(ctx && out && up && down_t && act && h, "%s: NULL argument", op);
    gs_status st = check_rows(op, up, true);
    if (st) return st;
    st = check_rows(op, down_t, false);
    if (st) return st;
    st = check_activations(op, h);
    if (st) return st;
    st = check_activations(op, act);
    if (st) return st;
    const int64_t E = h->ne[0], M = up->ne[1], N = h->ne[1];
    if (up->ne[0] != E) return gs_op_shape_error(op, up, "ne0 must equal h's ne0 (n_embd)");
    if (down_t->ne[0] != E || down_t->ne[1] != M) {
        return gs_op_shape_error(op, down_t, "must have up's shape {n_embd, n_ff}");
    }
    if (act->ne[0] != M || act->ne[1] != N) {
        return gs_op_shape_error(op, act, "must be {n_ff, n_tokens} (up's row count, h's token count)");
    }
    st = check_idx_skip(op, idx, skip, M, N);
    if (st) return st;
    st = new_sparse_node(ctx, GS_OP_SPARSE_FFN_UP_DOWN, GS_TYPE_F32, E, N, out);
    if (st) return st;
    (*out)->src[0] = up;
    (*out)->src[1] = down_t;
    (*out)->src[2] = act;
    (*out)->src[3] = h;
    (*out)->src[4] = idx;
    (*out)->src[5] = skip;
    return GS_OK;
}
