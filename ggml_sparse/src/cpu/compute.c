/*
 * compute.c - maps graph nodes to CPU kernels and sizes their scratch.
 */
#include "../gs_internal.h"

size_t gs_cpu_work_size(const gs_tensor * node, int n_threads) {
    switch (node->op) {
        case GS_OP_MUL_MAT:   return gs_cpu_mul_mat_work_size(node, n_threads);
        case GS_OP_ATTENTION: return gs_cpu_attention_work_size(node, n_threads);
        case GS_OP_SPARSE_INDEX:   return gs_cpu_sparse_index_work_size(node, n_threads);
        case GS_OP_MUL_MAT_SPARSE: return gs_cpu_mul_mat_sparse_work_size(node, n_threads);
        case GS_OP_AXPY_SPARSE:    return gs_cpu_axpy_sparse_work_size(node, n_threads);
        case GS_OP_SPARSE_FFN_BUNDLE: return gs_cpu_sparse_ffn_bundle_work_size(node, n_threads);
        case GS_OP_SPARSE_FFN_UP_DOWN: return gs_cpu_sparse_ffn_up_down_work_size(node, n_threads);
        case GS_OP_MUL_MAT_ID: return gs_cpu_mul_mat_id_work_size(node, n_threads);
        default:              return 0;
    }
}

bool gs_cpu_scratch_private(const gs_tensor * node) {
    /* attention, and mul_mat of a single activation row (each thread
     * quantizes it for itself), use gs_thread_scratch; mul_mat of several
     * rows shares its quantized activations (and any op not listed here is
     * taken to share) */
    switch (node->op) {
        case GS_OP_ATTENTION: return true;
        case GS_OP_MUL_MAT:   return gs_nrows(node->src[1]) == 1;
        default:              return false;
    }
}

void gs_cpu_compute_node(const gs_compute_params * p, gs_tensor * node) {
    switch (node->op) {
        case GS_OP_NONE:
        case GS_OP_VIEW:      break;
        case GS_OP_CPY:       gs_cpu_op_cpy(p, node); break;
        case GS_OP_SET_ROWS:  gs_cpu_op_set_rows(p, node); break;
        case GS_OP_GET_ROWS:  gs_cpu_op_get_rows(p, node); break;
        case GS_OP_ADD:
        case GS_OP_MUL:       gs_cpu_op_binary(p, node); break;
        case GS_OP_SCALE:     gs_cpu_op_scale(p, node); break;
        case GS_OP_UNARY:     gs_cpu_op_unary(p, node); break;
        case GS_OP_GLU:       gs_cpu_op_glu(p, node); break;
        case GS_OP_RMS_NORM:  gs_cpu_op_rms_norm(p, node); break;
        case GS_OP_NORM:      gs_cpu_op_norm(p, node); break;
        case GS_OP_ROPE:      gs_cpu_op_rope(p, node); break;
        case GS_OP_SOFT_MAX:  gs_cpu_op_soft_max(p, node); break;
        case GS_OP_MUL_MAT:   gs_cpu_op_mul_mat(p, node); break;
        case GS_OP_ATTENTION: gs_cpu_op_attention(p, node); break;
        case GS_OP_SPARSE_INDEX:   gs_cpu_op_sparse_index(p, node); break;
        case GS_OP_MUL_MAT_SPARSE: gs_cpu_op_mul_mat_sparse(p, node); break;
        case GS_OP_AXPY_SPARSE:    gs_cpu_op_axpy_sparse(p, node); break;
        case GS_OP_SPARSE_FFN_BUNDLE: gs_cpu_op_sparse_ffn_bundle(p, node); break;
        case GS_OP_SPARSE_FFN_UP_DOWN: gs_cpu_op_sparse_ffn_up_down(p, node); break;
        case GS_OP_SPARSE_INDEX_REMAP: gs_cpu_op_sparse_index_remap(p, node); break;
        case GS_OP_TOP_K:       gs_cpu_op_top_k(p, node); break;
        case GS_OP_MUL_MAT_ID:  gs_cpu_op_mul_mat_id(p, node); break;
        case GS_OP_MAP_IDS:     gs_cpu_op_map_ids(p, node); break;
        case GS_OP_MOE_WEIGHTS: gs_cpu_op_moe_weights(p, node); break;
        case GS_OP_MOE_SUM:     gs_cpu_op_moe_sum(p, node); break;
        default:
            if (p->ith == 0) gs_compute_fail(p, GS_ERR_UNSUPPORTED, "op %s has no CPU kernel", gs_op_str(node->op));
    }
}
