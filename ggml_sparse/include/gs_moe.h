/*
 * gs_moe.h - mixture-of-experts ops of ggml_sparse (public; included by
 * ggml_sparse.h, whose conventions apply: every function returns gs_status,
 * op constructors only check their arguments and record a node).
 *
 * A MoE FFN (Mixtral, Qwen-MoE, OLMoE, ...) routes each token to k of
 * n_expert expert FFNs. With the router's logits {n_expert, T}:
 *
 *     probs = gs_soft_max(logits)        (or gs_unary(.., GS_UNARY_SIGMOID))
 *     ids   = gs_top_k(probs, k)                         I32 {k, T}
 *     w     = gs_moe_weights(probs, ids, norm, scale)    F32 {k, T}
 *     hb    = h reshaped to {n_embd, 1, T}
 *     g, u  = gs_mul_mat_id(gate_exps, hb, ids), gs_mul_mat_id(up_exps, hb, ids)
 *     d     = gs_mul_mat_id(down_exps, glu(g, u), ids)   F32 {n_embd, k, T}
 *     y     = gs_moe_sum(d, w)                           F32 {n_embd, T}
 *
 * Expert ids are I32; an id of -1 in gs_mul_mat_id's ids means "this
 * expert runs elsewhere" (its rows are zero here): a device computes the hot
 * experts, the CPU the cold ones, gs_map_ids turning expert ids into the
 * slots of a device's expert cache (-1 where an expert is not cached).
 * Index inputs are checked when the graph runs (GS_ERR_RUNTIME, nothing
 * written). The CUDA backend has no kernels for these ops: its supports
 * query refuses them at planning.
 */
#ifndef GS_MOE_H
#define GS_MOE_H

#include "ggml_sparse.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cffi-begin */

/* Top-k selection: a F32 {n, T} (rows contiguous, ne2 = ne3 = 1), 1 <= k
 * <= n -> I32 {k, T}: per row the indices of its k largest values, in
 * descending order of value. Equal values: the lower index first (the
 * order of a stable descending argsort). NaN ranks below every number
 * (-INFINITY included): NaNs are picked last, lower index first among
 * them. -0.0 and +0.0 are equal. */
gs_status gs_top_k(gs_context * ctx, gs_tensor * a, int k, gs_tensor ** out);

/* Expert-indexed matrix product (ggml's GGML_OP_MUL_MAT_ID):
 *   as   {K, M, n_expert}: expert e's weight matrix {K, M} is plane e; any
 *        type gs_mul_mat takes (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
 *        Q5_1, Q4_K, Q5_K, Q6_K), rows contiguous; not repacked
 *        (GS_ERR_TYPE)
 *   b    F32 {K, n_b, T}, rows contiguous, n_b == 1 (every chosen expert
 *        reads the token's one row) or n_b == n_used (slot u reads row u)
 *   ids  contiguous I32 {n_used, T}: the experts of each token
 * -> out F32 {M, n_used, T}: out[t][u] = as[ids[u][t]] . b[t][n_b == 1 ? 0 : u],
 * each row of b quantized to the type's vec_dot_type as gs_mul_mat does.
 * ids[u][t] == -1: out[t][u] is all zeros (the expert runs elsewhere). Any
 * other id outside [0, n_expert) fails the compute (GS_ERR_RUNTIME).
 * A batch is grouped by expert, so each chosen expert's weights are read
 * once per call. Every output row is the same dot products in the same
 * order (gs_mul_mat's single-token order, equal to gs_mul_mat's for one
 * token) whatever the thread count and whatever the other tokens of the
 * batch: a token's rows are bit-identical alone and in any batch. */
gs_status gs_mul_mat_id(gs_context * ctx, gs_tensor * as, gs_tensor * b, gs_tensor * ids,
                        gs_tensor ** out);

/* Id lookup: ids contiguous I32 (any shape), map contiguous I32 {n_expert}
 * -> I32 of ids' shape: out = map[ids], an id of -1 gives -1; map entries
 * are copied as they are (-1: expert not in the cache). An id outside
 * [-1, n_expert) fails the compute (GS_ERR_RUNTIME). */
gs_status gs_map_ids(gs_context * ctx, gs_tensor * ids, gs_tensor * map, gs_tensor ** out);

/* Routing weights of the chosen experts: probs F32 {n_expert, T} (rows
 * contiguous), ids contiguous I32 {k, T} -> F32 {k, T}:
 *     w[u][t] = probs[ids[u][t]][t]
 * then with norm, llama.cpp's normalisation (its sum_rows, clamp, div):
 *     s = (float) (sum of w[u][t] over u = 0..k-1 in order, in double)
 *     s = max(s, 6.103515625e-5f);  w[u][t] = w[u][t] / s
 * then, when scale != 1, w[u][t] = w[u][t] * scale (float). scale must be
 * finite. Ids outside [0, n_expert) (-1 too) fail the compute
 * (GS_ERR_RUNTIME). */
gs_status gs_moe_weights(gs_context * ctx, gs_tensor * probs, gs_tensor * ids, bool norm, float scale,
                         gs_tensor ** out);

/* Weighted sum of the experts' outputs: experts F32 {E, k, T} (rows
 * contiguous), weights F32 {k, T} (contiguous) -> F32 {E, T}:
 *     out[t][i] = ((experts[t][0][i] * w[0][t] + experts[t][1][i] * w[1][t])
 *                  + experts[t][2][i] * w[2][t]) + ...
 * each product rounded to float, summed in float from u = 0 (llama.cpp's
 * ggml_mul by the weights, then ggml_add of the k slots in order). */
gs_status gs_moe_sum(gs_context * ctx, gs_tensor * experts, gs_tensor * weights, gs_tensor ** out);

/* cffi-end */

#ifdef __cplusplus
}
#endif

#endif /* GS_MOE_H */
