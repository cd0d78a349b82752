/*
 * ops.c - op constructors: check the shape/type contract stated in the
 * header, create the result tensor and record the node. No computation.
 */
#include "gs_internal.h"

#include <math.h>
#include <stdio.h>

static const char * const op_names[GS_OP_COUNT] = {
    "none", "view", "cpy", "set_rows", "get_rows", "add", "mul", "scale", "unary",
    "glu", "rms_norm", "norm", "rope", "soft_max", "mul_mat", "attention",
    "sparse_index", "mul_mat_sparse", "axpy_sparse", "sparse_ffn_bundle", "sparse_ffn_up_down",
    "sparse_index_remap", "top_k", "mul_mat_id", "map_ids", "moe_weights", "moe_sum",
};

const char * gs_op_name(gs_op op) {
    return (op >= 0 && op < GS_OP_COUNT) ? op_names[op] : "?";
}

#define CHECK_OUT(ctx, out) \
    GS_CHECK_ARG((ctx) && (out), "%s: NULL context or output pointer", __func__)
#define CHECK_T(t) \
    GS_CHECK_ARG((t) != NULL, "%s: NULL tensor argument '%s'", __func__, #t)

static gs_status shape_error(const char * op, const gs_tensor * a, const gs_tensor * b, const char * why) {
    return gs_set_error(GS_ERR_SHAPE,
                        "%s: %s (a '%s' is [%lld, %lld, %lld, %lld], b '%s' is [%lld, %lld, %lld, %lld])",
                        op, why, a->name, (long long) a->ne[0], (long long) a->ne[1],
                        (long long) a->ne[2], (long long) a->ne[3], b->name, (long long) b->ne[0],
                        (long long) b->ne[1], (long long) b->ne[2], (long long) b->ne[3]);
}

static gs_status type_error(const char * op, const gs_tensor * t, const char * want) {
    return gs_set_error(GS_ERR_TYPE, "%s: tensor '%s' has type %s, expected %s", op, t->name,
                        gs_get_type_traits(t->type)->name, want);
}

gs_status gs_op_type_error(const char * op, const gs_tensor * t, const char * want) {
    const gs_type_traits * tt = gs_get_type_traits(t->type);
    return gs_set_error(GS_ERR_TYPE, "%s: tensor '%s' has type %s, expected %s", op, t->name,
                        tt ? tt->name : "?", want);
}

gs_status gs_op_shape_error(const char * op, const gs_tensor * t, const char * why) {
    return gs_set_error(GS_ERR_SHAPE, "%s: '%s' is [%lld, %lld, %lld, %lld]: %s", op, t->name,
                        (long long) t->ne[0], (long long) t->ne[1], (long long) t->ne[2],
                        (long long) t->ne[3], why);
}

/* New op node of type `type` with a's rank and the given shape. */
gs_status gs_new_op_node(gs_context * ctx, gs_op op, gs_type type, int n_dims, const int64_t * ne,
                         gs_tensor ** out) {
    gs_tensor * t;
    gs_status st = gs_tensor_alloc_meta(ctx, type, n_dims, ne, &t);
    if (st) return st;
    t->op = op;
    *out = t;
    return GS_OK;
}

/* b broadcasts over a: each dim of a is a multiple of b's. */
static bool can_repeat(const gs_tensor * b, const gs_tensor * a) {
    for (int i = 0; i < GS_MAX_DIMS; i++) if (a->ne[i] % b->ne[i] != 0) return false;
    return true;
}

/* Quantized tensors are read block by block along ne0. */
static bool blocks_contiguous(const gs_tensor * t) {
    const gs_type_traits * tt = gs_get_type_traits(t->type);
    return !tt->is_quantized || t->nb[0] == tt->type_size;
}

/* Index and position inputs are contiguous I32 tensors. */
static gs_status check_index(const char * op, const gs_tensor * idx) {
    if (idx->type != GS_TYPE_I32) return type_error(op, idx, "i32");
    if (!gs_is_contiguous(idx)) return gs_set_error(GS_ERR_SHAPE, "%s: index tensor '%s' must be contiguous", op, idx->name);
    return GS_OK;
}

/* ---- views ------------------------------------------------------------- */
gs_status gs_view(gs_context * ctx, gs_tensor * a, int n_dims, const int64_t * ne,
                  const size_t * nb, size_t offset, gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    CHECK_T(a);
    GS_CHECK_ARG(ne && nb, "gs_view: NULL shape or strides");
    gs_tensor * t;
    gs_status st = gs_tensor_alloc_meta(ctx, a->type, n_dims, ne, &t);
    if (st) return st;
    for (int i = 0; i < n_dims; i++) t->nb[i] = nb[i];
    for (int i = n_dims; i < GS_MAX_DIMS; i++) t->nb[i] = t->nb[i - 1] * (size_t) t->ne[i - 1];
    if (offset + gs_tensor_nbytes(t) > gs_tensor_nbytes(a)) {
        return gs_set_error(GS_ERR_SHAPE, "gs_view: view of %zu bytes at offset %zu exceeds '%s' (%zu bytes)",
                            gs_tensor_nbytes(t), offset, a->name, gs_tensor_nbytes(a));
    }
    t->op = GS_OP_VIEW;
    t->src[0] = a;
    t->view_src = a;
    t->view_offs = offset;
    snprintf(t->name, sizeof(t->name), "%.50s (view)", a->name);
    *out = t;
    return GS_OK;
}

gs_status gs_reshape(gs_context * ctx, gs_tensor * a, int n_dims, const int64_t * ne,
                     gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    CHECK_T(a);
    GS_CHECK_ARG(ne && n_dims >= 1 && n_dims <= GS_MAX_DIMS, "gs_reshape: bad shape");
    if (!gs_is_contiguous(a)) return gs_set_error(GS_ERR_SHAPE, "gs_reshape: '%s' is not contiguous", a->name);
    int64_t n = 1;
    for (int i = 0; i < n_dims; i++) n *= ne[i];
    if (n != gs_nelements(a)) {
        return gs_set_error(GS_ERR_SHAPE, "gs_reshape: %lld elements cannot become %lld",
                            (long long) gs_nelements(a), (long long) n);
    }
    gs_tensor * t;
    gs_status st = gs_tensor_alloc_meta(ctx, a->type, n_dims, ne, &t);
    if (st) return st;
    t->op = GS_OP_VIEW;
    t->src[0] = a;
    t->view_src = a;
    snprintf(t->name, sizeof(t->name), "%.50s (reshaped)", a->name);
    *out = t;
    return GS_OK;
}

gs_status gs_permute(gs_context * ctx, gs_tensor * a, int a0, int a1, int a2, int a3,
                     gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    CHECK_T(a);
    const int ax[4] = { a0, a1, a2, a3 };
    int seen = 0;
    for (int i = 0; i < 4; i++) {
        if (ax[i] < 0 || ax[i] > 3 || (seen & (1 << ax[i]))) {
            return gs_set_error(GS_ERR_INVALID_ARG, "gs_permute: axes (%d, %d, %d, %d) are not a permutation",
                                a0, a1, a2, a3);
        }
        seen |= 1 << ax[i];
    }
    gs_tensor * t;
    gs_status st = gs_tensor_alloc_meta(ctx, a->type, GS_MAX_DIMS, a->ne, &t);
    if (st) return st;
    for (int i = 0; i < 4; i++) {
        t->ne[ax[i]] = a->ne[i];
        t->nb[ax[i]] = a->nb[i];
    }
    t->n_dims = a->n_dims;
    t->op = GS_OP_VIEW;
    t->src[0] = a;
    t->view_src = a;
    snprintf(t->name, sizeof(t->name), "%.50s (permuted)", a->name);
    *out = t;
    return GS_OK;
}

gs_status gs_transpose(gs_context * ctx, gs_tensor * a, gs_tensor ** out) {
    return gs_permute(ctx, a, 1, 0, 2, 3, out);
}

/* ---- copies ------------------------------------------------------------ */
static bool cpy_type_ok(gs_type t) {
    const gs_type_traits * tt = gs_get_type_traits(t);
    return tt && tt->to_float && t != GS_TYPE_Q8_K && t != GS_TYPE_Q8_1;
}

gs_status gs_cast(gs_context * ctx, gs_tensor * a, gs_type type, gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    CHECK_T(a);
    if (!cpy_type_ok(a->type)) return type_error("gs_cast", a, "a float or weight type");
    if (!cpy_type_ok(type)) return gs_set_error(GS_ERR_TYPE, "gs_cast: cannot convert to type %d", (int) type);
    if (!blocks_contiguous(a)) return gs_set_error(GS_ERR_SHAPE, "gs_cast: blocks of '%s' are not contiguous", a->name);
    gs_tensor * t;
    gs_status st = gs_new_op_node(ctx, GS_OP_CPY, type, a->n_dims, a->ne, &t);
    if (st) return st;
    t->src[0] = a;
    *out = t;
    return GS_OK;
}

gs_status gs_cpy(gs_context * ctx, gs_tensor * a, gs_tensor * dst, gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    CHECK_T(a);
    CHECK_T(dst);
    if (gs_nelements(a) != gs_nelements(dst)) return shape_error("gs_cpy", a, dst, "element counts differ");
    if (!gs_is_contiguous(dst)) return gs_set_error(GS_ERR_SHAPE, "gs_cpy: destination '%s' is not contiguous", dst->name);
    if (!cpy_type_ok(a->type)) return type_error("gs_cpy", a, "a float or weight type");
    if (!cpy_type_ok(dst->type)) return type_error("gs_cpy", dst, "a float or weight type");
    if (gs_get_type_traits(a->type)->is_quantized && a->ne[0] != dst->ne[0]) {
        return shape_error("gs_cpy", a, dst, "quantized rows must keep their length");
    }
    if (!blocks_contiguous(a)) return gs_set_error(GS_ERR_SHAPE, "gs_cpy: blocks of '%s' are not contiguous", a->name);
    gs_tensor * t;
    gs_status st = gs_tensor_alloc_meta(ctx, dst->type, dst->n_dims, dst->ne, &t);
    if (st) return st;
    memcpy(t->nb, dst->nb, sizeof(t->nb));
    t->op = GS_OP_CPY;
    t->src[0] = a;
    t->src[1] = dst;
    t->view_src = dst;
    snprintf(t->name, sizeof(t->name), "%.50s (copy)", dst->name);
    *out = t;
    return GS_OK;
}

gs_status gs_set_rows(gs_context * ctx, gs_tensor * dst, gs_tensor * src, gs_tensor * idx,
                      gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    CHECK_T(dst);
    CHECK_T(src);
    CHECK_T(idx);
    gs_status st = check_index("gs_set_rows", idx);
    if (st) return st;
    if (src->type != GS_TYPE_F32) return type_error("gs_set_rows", src, "f32");
    if (!cpy_type_ok(dst->type)) return type_error("gs_set_rows", dst, "a float or weight type");
    if (src->ne[0] != dst->ne[0]) return shape_error("gs_set_rows", dst, src, "row lengths differ");
    if (src->ne[2] != dst->ne[2] || src->ne[3] != dst->ne[3]) {
        return shape_error("gs_set_rows", dst, src, "dims 2 and 3 of src and dst differ");
    }
    if (!blocks_contiguous(dst)) return gs_set_error(GS_ERR_SHAPE, "gs_set_rows: blocks of '%s' are not contiguous", dst->name);
    if (gs_nelements(idx) != gs_nrows(src)) return shape_error("gs_set_rows", idx, src, "one index per source row needed");
    if (src->nb[0] != sizeof(float)) return gs_set_error(GS_ERR_SHAPE, "gs_set_rows: source rows must be contiguous");
    gs_tensor * t;
    st = gs_tensor_alloc_meta(ctx, dst->type, dst->n_dims, dst->ne, &t);
    if (st) return st;
    memcpy(t->nb, dst->nb, sizeof(t->nb));
    t->op = GS_OP_SET_ROWS;
    t->src[0] = src;
    t->src[1] = idx;
    t->src[2] = dst;
    t->view_src = dst;
    snprintf(t->name, sizeof(t->name), "%.50s (set_rows)", dst->name);
    *out = t;
    return GS_OK;
}

gs_status gs_get_rows(gs_context * ctx, gs_tensor * a, gs_tensor * idx, gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    CHECK_T(a);
    CHECK_T(idx);
    gs_status st = check_index("gs_get_rows", idx);
    if (st) return st;
    if (!cpy_type_ok(a->type)) return type_error("gs_get_rows", a, "a float or weight type");
    if (a->ne[2] != 1 || a->ne[3] != 1) return shape_error("gs_get_rows", a, idx, "table must be 2-D");
    if (!blocks_contiguous(a)) return gs_set_error(GS_ERR_SHAPE, "gs_get_rows: blocks of '%s' are not contiguous", a->name);
    const int64_t ne[2] = { a->ne[0], gs_nelements(idx) };
    st = gs_new_op_node(ctx, GS_OP_GET_ROWS, GS_TYPE_F32, 2, ne, out);
    if (st) return st;
    (*out)->src[0] = a;
    (*out)->src[1] = idx;
    return GS_OK;
}

/* ---- element-wise ------------------------------------------------------ */
static gs_status binary(gs_context * ctx, gs_op op, const char * name, gs_tensor * a, gs_tensor * b,
                        gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    GS_CHECK_ARG(a && b, "%s: NULL tensor argument", name);
    if (a->type != GS_TYPE_F32) return type_error(name, a, "f32");
    if (b->type != GS_TYPE_F32) return type_error(name, b, "f32");
    if (!can_repeat(b, a)) return shape_error(name, a, b, "b does not broadcast over a");
    gs_status st = gs_new_op_node(ctx, op, GS_TYPE_F32, a->n_dims, a->ne, out);
    if (st) return st;
    (*out)->src[0] = a;
    (*out)->src[1] = b;
    return GS_OK;
}

gs_status gs_add(gs_context * ctx, gs_tensor * a, gs_tensor * b, gs_tensor ** out) {
    return binary(ctx, GS_OP_ADD, "gs_add", a, b, out);
}

gs_status gs_mul(gs_context * ctx, gs_tensor * a, gs_tensor * b, gs_tensor ** out) {
    return binary(ctx, GS_OP_MUL, "gs_mul", a, b, out);
}

/* Unary-shaped F32 node with float params. */
static gs_status unary_like(gs_context * ctx, gs_op op, const char * name, gs_tensor * a,
                            gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    GS_CHECK_ARG(a != NULL, "%s: NULL tensor argument", name);
    if (a->type != GS_TYPE_F32) return type_error(name, a, "f32");
    gs_status st = gs_new_op_node(ctx, op, GS_TYPE_F32, a->n_dims, a->ne, out);
    if (st) return st;
    (*out)->src[0] = a;
    return GS_OK;
}

gs_status gs_scale(gs_context * ctx, gs_tensor * a, float s, gs_tensor ** out) {
    gs_status st = unary_like(ctx, GS_OP_SCALE, "gs_scale", a, out);
    if (!st) memcpy(&(*out)->op_params[0], &s, sizeof(float));
    return st;
}

gs_status gs_unary(gs_context * ctx, gs_tensor * a, gs_unary_op op, gs_tensor ** out) {
    if ((int) op < GS_UNARY_RELU || op > GS_UNARY_SIGMOID) {
        return gs_set_error(GS_ERR_INVALID_ARG, "gs_unary: unknown unary op %d", (int) op);
    }
    gs_status st = unary_like(ctx, GS_OP_UNARY, "gs_unary", a, out);
    if (!st) (*out)->op_params[0] = (int32_t) op;
    return st;
}

gs_status gs_glu(gs_context * ctx, gs_tensor * a, gs_tensor * b, gs_unary_op op, bool gate_b,
                 gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    GS_CHECK_ARG(a && b, "gs_glu: NULL tensor argument");
    if ((int) op < GS_UNARY_RELU || op > GS_UNARY_SIGMOID) {
        return gs_set_error(GS_ERR_INVALID_ARG, "gs_glu: unknown unary op %d", (int) op);
    }
    if (a->type != GS_TYPE_F32) return type_error("gs_glu", a, "f32");
    if (b->type != GS_TYPE_F32) return type_error("gs_glu", b, "f32");
    if (!gs_same_shape(a, b)) return shape_error("gs_glu", a, b, "gate and value shapes differ");
    gs_status st = gs_new_op_node(ctx, GS_OP_GLU, GS_TYPE_F32, a->n_dims, a->ne, out);
    if (st) return st;
    (*out)->src[0] = a;
    (*out)->src[1] = b;
    (*out)->op_params[0] = (int32_t) op;
    (*out)->op_params[1] = gate_b ? 1 : 0;
    return GS_OK;
}

gs_status gs_rms_norm(gs_context * ctx, gs_tensor * a, float eps, gs_tensor ** out) {
    GS_CHECK_ARG(eps >= 0.0f, "gs_rms_norm: eps must be >= 0");
    gs_status st = unary_like(ctx, GS_OP_RMS_NORM, "gs_rms_norm", a, out);
    if (!st) memcpy(&(*out)->op_params[0], &eps, sizeof(float));
    return st;
}

gs_status gs_norm(gs_context * ctx, gs_tensor * a, float eps, gs_tensor ** out) {
    GS_CHECK_ARG(eps >= 0.0f, "gs_norm: eps must be >= 0");
    gs_status st = unary_like(ctx, GS_OP_NORM, "gs_norm", a, out);
    if (!st) memcpy(&(*out)->op_params[0], &eps, sizeof(float));
    return st;
}

gs_rope_params gs_rope_default_params(int n_dims) {
    gs_rope_params p = { .n_dims = n_dims, .mode = GS_ROPE_NORMAL, .freq_base = 10000.0f, .freq_scale = 1.0f,
                         .attn_factor = 1.0f, .ext_factor = 0.0f, .beta_fast = 32.0f, .beta_slow = 1.0f,
                         .n_ctx_orig = 0 };
    return p;
}

/* llama.cpp's context (libllama, plain float steps, no fused multiply-add) */
float gs_rope_yarn_attn_factor(float freq_scale, float file_attn_factor) {
    const float factor = 1.0f / freq_scale;
    float m = factor <= 1.0f ? 1.0f : 0.1f * logf(factor) + 1.0f;
    m *= 1.0f / (1.0f + 0.1f * logf(factor));
    return m * file_attn_factor;
}

/* YaRN's correction dims (ggml_rope_yarn_corr_dims): the pair index at which
 * a pair turns `rot` times over n_ctx_orig positions, in float steps. */
static float yarn_corr_dim(int n_dims, int n_ctx_orig, float rot, float base) {
    return (float) n_dims * logf((float) n_ctx_orig / (rot * 2.0f * (float) M_PI)) / (2.0f * logf(base));
}

gs_status gs_rope(gs_context * ctx, gs_tensor * a, gs_tensor * pos, const gs_rope_params * p,
                  gs_tensor ** out) {
    return gs_rope_ext(ctx, a, pos, NULL, p, out);
}

gs_status gs_rope_ext(gs_context * ctx, gs_tensor * a, gs_tensor * pos, gs_tensor * freq_factors,
                      const gs_rope_params * p, gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    GS_CHECK_ARG(a && p && pos, "gs_rope: NULL tensor, params or positions");
    gs_status st = check_index("gs_rope", pos);
    if (st) return st;
    if (gs_nelements(pos) != a->ne[2]) return shape_error("gs_rope", a, pos, "need one position per token (a->ne[2])");
    if (p->n_dims <= 0 || p->n_dims > a->ne[0] || p->n_dims % 2) {
        return gs_set_error(GS_ERR_INVALID_ARG, "gs_rope: n_dims %d must be even and in 2..%lld", p->n_dims,
                            (long long) a->ne[0]);
    }
    if (p->mode != GS_ROPE_NORMAL && p->mode != GS_ROPE_NEOX) {
        return gs_set_error(GS_ERR_INVALID_ARG, "gs_rope: unknown mode %d", p->mode);
    }
    if (!(p->freq_base > 0.0f) || !(p->freq_scale > 0.0f)) {
        return gs_set_error(GS_ERR_INVALID_ARG, "gs_rope: freq_base and freq_scale must be > 0");
    }
    if (!isfinite(p->attn_factor) || !(p->attn_factor > 0.0f)) {
        return gs_set_error(GS_ERR_INVALID_ARG, "gs_rope: attn_factor %g must be finite and > 0", p->attn_factor);
    }
    if (!isfinite(p->ext_factor) || !(p->ext_factor >= 0.0f)) {
        return gs_set_error(GS_ERR_INVALID_ARG, "gs_rope: ext_factor %g must be finite and >= 0", p->ext_factor);
    }
    if (p->ext_factor != 0.0f) {
        if (p->n_ctx_orig <= 0) {
            return gs_set_error(GS_ERR_INVALID_ARG, "gs_rope: YaRN (ext_factor %g) needs n_ctx_orig > 0, got %d",
                                p->ext_factor, p->n_ctx_orig);
        }
        if (!isfinite(p->beta_fast) || !(p->beta_fast > 0.0f) || !isfinite(p->beta_slow) || !(p->beta_slow > 0.0f)) {
            return gs_set_error(GS_ERR_INVALID_ARG, "gs_rope: YaRN's beta_fast %g and beta_slow %g must be finite and > 0",
                                p->beta_fast, p->beta_slow);
        }
    }
    if (freq_factors) {
        if (freq_factors->type != GS_TYPE_F32) return type_error("gs_rope", freq_factors, "f32");
        if (!gs_is_contiguous(freq_factors) || gs_nelements(freq_factors) != p->n_dims / 2) {
            return shape_error("gs_rope", a, freq_factors, "freq_factors needs n_dims/2 contiguous f32");
        }
    }
    st = unary_like(ctx, GS_OP_ROPE, "gs_rope", a, out);
    if (st) return st;
    gs_tensor * t = *out;
    t->src[1] = pos;
    t->src[2] = freq_factors;
    t->op_params[0] = p->n_dims;
    t->op_params[1] = p->mode;
    memcpy(&t->op_params[2], &p->freq_base, sizeof(float));
    memcpy(&t->op_params[3], &p->freq_scale, sizeof(float));
    /* the scaling as the kernels use it (ops_rope.c's op_params) */
    float mscale = p->attn_factor, lo = 0.0f, hi = 0.0f;
    if (p->ext_factor != 0.0f) {
        mscale *= fmaf(0.1f, logf(1.0f / p->freq_scale), 1.0f);   /* llama.cpp's compiled FMA */
        lo = floorf(yarn_corr_dim(p->n_dims, p->n_ctx_orig, p->beta_fast, p->freq_base));
        hi = ceilf(yarn_corr_dim(p->n_dims, p->n_ctx_orig, p->beta_slow, p->freq_base));
        lo = 0.0f > lo ? 0.0f : lo;
        hi = (float) (p->n_dims - 1) < hi ? (float) (p->n_dims - 1) : hi;
    }
    memcpy(&t->op_params[4], &mscale, sizeof(float));
    memcpy(&t->op_params[5], &p->ext_factor, sizeof(float));
    memcpy(&t->op_params[6], &lo, sizeof(float));
    memcpy(&t->op_params[7], &hi, sizeof(float));
    t->op_params[8] = freq_factors != NULL;
    return GS_OK;
}

gs_status gs_soft_max(gs_context * ctx, gs_tensor * a, gs_tensor * mask, float scale, gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    CHECK_T(a);
    if (mask) {
        if (mask->type != GS_TYPE_F32) return type_error("gs_soft_max", mask, "f32");
        if (mask->ne[0] != a->ne[0] || mask->ne[1] < a->ne[1] || mask->ne[2] != 1 || mask->ne[3] != 1) {
            return shape_error("gs_soft_max", a, mask, "mask must be {ne0, >= ne1}");
        }
    }
    gs_status st = unary_like(ctx, GS_OP_SOFT_MAX, "gs_soft_max", a, out);
    if (st) return st;
    (*out)->src[1] = mask;
    memcpy(&(*out)->op_params[0], &scale, sizeof(float));
    return GS_OK;
}

/* ---- matrix product and attention --------------------------------------- */
gs_status gs_mul_mat_rowwise(gs_context * ctx, gs_tensor * a, gs_tensor * b, gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    gs_status st = gs_mul_mat(ctx, a, b, out);
    if (st) return st;
    (*out)->op_params[0] = 1;
    return GS_OK;
}

gs_status gs_mul_mat(gs_context * ctx, gs_tensor * a, gs_tensor * b, gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    CHECK_T(a);
    CHECK_T(b);
    const gs_type_traits * ta = gs_get_type_traits(a->type);
    if (!gs_get_type_traits(ta->vec_dot_type) || !gs_cpu_funcs(a->type)->vec_dot) {
        return type_error("gs_mul_mat", a, "a weight type with a dot product kernel");
    }
    if (b->type != GS_TYPE_F32) return type_error("gs_mul_mat", b, "f32");
    if (b->nb[0] != sizeof(float)) return gs_set_error(GS_ERR_SHAPE, "gs_mul_mat: rows of '%s' must be contiguous", b->name);
    if (a->ne[0] != b->ne[0]) return shape_error("gs_mul_mat", a, b, "inner dimensions (ne0) differ");
    if (b->ne[2] % a->ne[2] || b->ne[3] % a->ne[3]) return shape_error("gs_mul_mat", a, b, "a does not broadcast over b");
    if (a->nb[0] != ta->type_size) return gs_set_error(GS_ERR_SHAPE, "gs_mul_mat: rows of '%s' must be contiguous", a->name);
    if (b->ne[0] % gs_get_type_traits(ta->vec_dot_type)->blck_size) {
        return shape_error("gs_mul_mat", a, b, "ne0 is not a multiple of the activation block size");
    }
    const int64_t ne[4] = { a->ne[1], b->ne[1], b->ne[2], b->ne[3] };
    gs_status st = gs_new_op_node(ctx, GS_OP_MUL_MAT, GS_TYPE_F32, b->n_dims < 2 ? 2 : b->n_dims, ne, out);
    if (st) return st;
    (*out)->src[0] = a;
    (*out)->src[1] = b;
    return GS_OK;
}

gs_attention_params gs_attention_default_params(float scale) {
    gs_attention_params p = { .scale = scale, .n_swa = 0, .softcap = 0.0f, .n_stream = 0, .rowwise = 0 };
    return p;
}

gs_status gs_attention(gs_context * ctx, gs_tensor * q, gs_tensor * k, gs_tensor * v, gs_tensor * pos,
                       float scale, gs_tensor ** out) {
    const gs_attention_params p = gs_attention_default_params(scale);
    return gs_attention_ext(ctx, q, k, v, pos, &p, out);
}

gs_status gs_attention_ext(gs_context * ctx, gs_tensor * q, gs_tensor * k, gs_tensor * v, gs_tensor * pos,
                           const gs_attention_params * p, gs_tensor ** out) {
    CHECK_OUT(ctx, out);
    GS_CHECK_ARG(p != NULL, "gs_attention: NULL params");
    GS_CHECK_ARG(p->n_swa >= 0, "gs_attention: n_swa %d must be >= 0", (int) p->n_swa);
    GS_CHECK_ARG(isfinite(p->softcap) && p->softcap >= 0.0f, "gs_attention: softcap must be a finite number >= 0");
    GS_CHECK_ARG(isfinite(p->scale), "gs_attention: scale must be finite");
    GS_CHECK_ARG(p->n_stream >= 0, "gs_attention: n_stream %d must be >= 0", (int) p->n_stream);
    CHECK_T(q);
    CHECK_T(k);
    CHECK_T(v);
    CHECK_T(pos);
    if (q->type != GS_TYPE_F32) return type_error("gs_attention", q, "f32");
    const bool k_quant = k->type == GS_TYPE_Q8_0 || k->type == GS_TYPE_Q4_0;
    const bool v_quant = v->type == GS_TYPE_Q8_0 || v->type == GS_TYPE_Q4_0;
    if (!k_quant && k->type != GS_TYPE_F32 && k->type != GS_TYPE_F16) return type_error("gs_attention", k, "f32, f16, q8_0 or q4_0");
    if (!v_quant && v->type != GS_TYPE_F32 && v->type != GS_TYPE_F16) return type_error("gs_attention", v, "f32, f16, q8_0 or q4_0");
    if (k_quant != v_quant) {
        return gs_set_error(GS_ERR_TYPE, "gs_attention: caches '%s' (%s) and '%s' (%s) must be both quantized "
                            "(q8_0/q4_0) or both f32/f16", k->name, gs_get_type_traits(k->type)->name, v->name,
                            gs_get_type_traits(v->type)->name);
    }
    gs_status st = check_index("gs_attention", pos);
    if (st) return st;
    if (q->nb[0] != sizeof(float)) return gs_set_error(GS_ERR_SHAPE, "gs_attention: rows of '%s' must be contiguous", q->name);
    if (k->ne[0] != q->ne[0] || v->ne[0] != q->ne[0]) return shape_error("gs_attention", q, k, "head_dim differs");
    if (!gs_same_shape(k, v)) return shape_error("gs_attention", k, v, "k and v caches differ in shape");
    if (q->ne[1] % k->ne[1]) return shape_error("gs_attention", q, k, "n_head is not a multiple of n_head_kv");
    if (gs_nelements(pos) != q->ne[2]) return shape_error("gs_attention", q, pos, "need one position per query token");
    if (q->ne[3] != 1 || k->ne[3] != 1) return shape_error("gs_attention", q, k, "4-D inputs are not supported");
    if (k->nb[0] != gs_get_type_traits(k->type)->type_size || v->nb[0] != gs_get_type_traits(v->type)->type_size) {
        return gs_set_error(GS_ERR_SHAPE, "gs_attention: cache rows must be contiguous in head_dim");
    }
    if (p->n_stream && k->ne[2] % p->n_stream) {
        return gs_set_error(GS_ERR_SHAPE, "gs_attention: the cache's %lld slots are not a whole number of streams of %d",
                            (long long) k->ne[2], (int) p->n_stream);
    }
    st = gs_new_op_node(ctx, GS_OP_ATTENTION, GS_TYPE_F32, 3, q->ne, out);
    if (st) return st;
    gs_tensor * t = *out;
    t->src[0] = q;
    t->src[1] = k;
    t->src[2] = v;
    t->src[3] = pos;
    memcpy(&t->op_params[0], &p->scale, sizeof(float));
    t->op_params[1] = p->n_swa;
    memcpy(&t->op_params[2], &p->softcap, sizeof(float));
    t->op_params[3] = p->n_stream;
    t->op_params[4] = p->rowwise != 0;
    return GS_OK;
}
