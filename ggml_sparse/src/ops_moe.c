/*
 * ops_moe.c - constructors of the mixture-of-experts ops (contracts in
 * gs_moe.h). They check shapes and types and record the node; index values
 * are checked by the kernels (cpu/ops_moe.c, cpu/matmul_id.c).
 */
#include "gs_internal.h"

#include <math.h>
#include <stdio.h>

#define CHECK_OUT(ctx, out) \
    GS_CHECK_ARG((ctx) && (out), "%s: NULL context or output pointer", __func__)
#define CHECK_T(t) \
    GS_CHECK_ARG((t) != NULL, "%s: NULL tensor argument '%s'", __func__, #t)

/* Contiguous I32 {n0, n1} (n0 or n1 < 0: any). */
static gs_status check_ids(const char * op, const gs_tensor * ids, int64_t n0, int64_t n1) {
    if (ids->type != GS_TYPE_I32) return gs_op_type_error(op, ids, "i32");
    if (!gs_is_contiguous(ids)) return gs_op_shape_error(op, ids, "ids must be contiguous");
    if (n0 < 0) return GS_OK;
    if (ids->ne[0] != n0 || ids->ne[1] != n1 || ids->ne[2] != 1 || ids->ne[3] != 1) {
        char why[96];
        snprintf(why, sizeof(why), "ids must be {%lld, %lld}", (long long) n0, (long long) n1);
        return gs_op_shape_error(op, ids, why);
    }
    return GS_OK;
}

/* F32 {n, T} with contiguous rows. */
static gs_status check_rows_f32(const char * op, const gs_tensor * a, const char * what) {
    if (a->type != GS_TYPE_F32) return gs_op_type_error(op, a, "f32");
    if (a->nb[0] != sizeof(float) || a->ne[2] != 1 || a->ne[3] != 1) {
        char why[96];
        snprintf(why, sizeof(why), "%s must be 2-D F32 with contiguous rows", what);
        return gs_op_shape_error(op, a, why);
    }
    return GS_OK;
}

gs_status gs_top_k(gs_context * ctx, gs_tensor * a, int k, gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    CHECK_T(a);
    gs_status st = check_rows_f32("gs_top_k", a, "a");
    if (st) return st;
    if (k < 1 || k > a->ne[0]) {
        return gs_set_error(GS_ERR_INVALID_ARG, "gs_top_k: k = %d must be in 1..%lld (the row length of '%s')", k,
                            (long long) a->ne[0], a->name);
    }
    const int64_t ne[2] = { k, a->ne[1] };
    st = gs_new_op_node(ctx, GS_OP_TOP_K, GS_TYPE_I32, 2, ne, out);
    if (st) return st;
    (*out)->src[0] = a;
    (*out)->op_params[0] = k;
    return GS_OK;
}

gs_status gs_mul_mat_id(gs_context * ctx, gs_tensor * as, gs_tensor * b, gs_tensor * ids, gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    CHECK_T(as);
    CHECK_T(b);
    CHECK_T(ids);
    const gs_type_traits * ta = gs_get_type_traits(as->type);
    if (as->flags & GS_FLAG_REPACKED) {
        return gs_set_error(GS_ERR_TYPE, "gs_mul_mat_id: '%s' is repacked (gs_tensor_repack); expert weights must "
                            "keep the row-major layout", as->name);
    }
    if (!ta || !gs_get_type_traits(ta->vec_dot_type) || !gs_cpu_funcs(as->type)->vec_dot ||
        as->type == GS_TYPE_Q8_1 || as->type == GS_TYPE_Q8_K) {
        return gs_op_type_error("gs_mul_mat_id", as, "a weight type with a dot product kernel");
    }
    if (as->nb[0] != ta->type_size) return gs_op_shape_error("gs_mul_mat_id", as, "expert rows must be contiguous");
    if (as->ne[3] != 1) return gs_op_shape_error("gs_mul_mat_id", as, "experts must be 3-D {K, M, n_expert}");
    if (b->type != GS_TYPE_F32) return gs_op_type_error("gs_mul_mat_id", b, "f32");
    if (b->nb[0] != sizeof(float) || b->ne[3] != 1) {
        return gs_op_shape_error("gs_mul_mat_id", b, "activations must be 3-D {K, n_b, T} with contiguous rows");
    }
    if (b->ne[0] != as->ne[0]) return gs_op_shape_error("gs_mul_mat_id", b, "ne0 differs from the experts' K");
    if (b->ne[0] % gs_get_type_traits(ta->vec_dot_type)->blck_size) {
        return gs_op_shape_error("gs_mul_mat_id", b, "ne0 is not a multiple of the activation block size");
    }
    if (ids->type != GS_TYPE_I32) return gs_op_type_error("gs_mul_mat_id", ids, "i32");
    if (!gs_is_contiguous(ids) || ids->ne[2] != 1 || ids->ne[3] != 1) {
        return gs_op_shape_error("gs_mul_mat_id", ids, "ids must be contiguous {n_used, T}");
    }
    const int64_t n_used = ids->ne[0], T = ids->ne[1];
    if (b->ne[2] != T) return gs_op_shape_error("gs_mul_mat_id", b, "b's ne2 must be the token count (ids' ne1)");
    if (b->ne[1] != 1 && b->ne[1] != n_used) {
        return gs_op_shape_error("gs_mul_mat_id", b, "b's ne1 must be 1 (broadcast) or n_used (ids' ne0)");
    }
    const int64_t ne[3] = { as->ne[1], n_used, T };
    gs_status st = gs_new_op_node(ctx, GS_OP_MUL_MAT_ID, GS_TYPE_F32, 3, ne, out);
    if (st) return st;
    (*out)->src[0] = as;
    (*out)->src[1] = b;
    (*out)->src[2] = ids;
    return GS_OK;
}

gs_status gs_map_ids(gs_context * ctx, gs_tensor * ids, gs_tensor * map, gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    CHECK_T(ids);
    CHECK_T(map);
    gs_status st = check_ids("gs_map_ids", ids, -1, -1);
    if (st) return st;
    if (map->type != GS_TYPE_I32) return gs_op_type_error("gs_map_ids", map, "i32");
    if (!gs_is_contiguous(map) || map->ne[1] != 1 || map->ne[2] != 1 || map->ne[3] != 1) {
        return gs_op_shape_error("gs_map_ids", map, "map must be contiguous {n_expert}");
    }
    st = gs_new_op_node(ctx, GS_OP_MAP_IDS, GS_TYPE_I32, ids->n_dims, ids->ne, out);
    if (st) return st;
    (*out)->src[0] = ids;
    (*out)->src[1] = map;
    return GS_OK;
}

gs_status gs_moe_weights(gs_context * ctx, gs_tensor * probs, gs_tensor * ids, bool norm, float scale,
                         gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    CHECK_T(probs);
    CHECK_T(ids);
    GS_CHECK_ARG(isfinite(scale), "gs_moe_weights: scale must be finite");
    gs_status st = check_rows_f32("gs_moe_weights", probs, "probs");
    if (st) return st;
    if (ids->type != GS_TYPE_I32) return gs_op_type_error("gs_moe_weights", ids, "i32");
    if (ids->ne[1] != probs->ne[1]) return gs_op_shape_error("gs_moe_weights", ids, "ids' ne1 must be probs' token count");
    st = check_ids("gs_moe_weights", ids, ids->ne[0], probs->ne[1]);
    if (st) return st;
    const int64_t ne[2] = { ids->ne[0], ids->ne[1] };
    st = gs_new_op_node(ctx, GS_OP_MOE_WEIGHTS, GS_TYPE_F32, 2, ne, out);
    if (st) return st;
    (*out)->src[0] = probs;
    (*out)->src[1] = ids;
    (*out)->op_params[0] = norm ? 1 : 0;
    memcpy(&(*out)->op_params[1], &scale, sizeof(float));
    return GS_OK;
}

gs_status gs_moe_sum(gs_context * ctx, gs_tensor * experts, gs_tensor * weights, gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    CHECK_T(experts);
    CHECK_T(weights);
    if (experts->type != GS_TYPE_F32) return gs_op_type_error("gs_moe_sum", experts, "f32");
    if (weights->type != GS_TYPE_F32) return gs_op_type_error("gs_moe_sum", weights, "f32");
    if (experts->nb[0] != sizeof(float) || experts->ne[3] != 1) {
        return gs_op_shape_error("gs_moe_sum", experts, "experts must be 3-D {E, k, T} with contiguous rows");
    }
    if (!gs_is_contiguous(weights) || weights->ne[0] != experts->ne[1] || weights->ne[1] != experts->ne[2] ||
        weights->ne[2] != 1 || weights->ne[3] != 1) {
        return gs_op_shape_error("gs_moe_sum", weights, "weights must be contiguous {k, T} (experts' ne1, ne2)");
    }
    const int64_t ne[2] = { experts->ne[0], experts->ne[2] };
    gs_status st = gs_new_op_node(ctx, GS_OP_MOE_SUM, GS_TYPE_F32, 2, ne, out);
    if (st) return st;
    (*out)->src[0] = experts;
    (*out)->src[1] = weights;
    return GS_OK;
}
