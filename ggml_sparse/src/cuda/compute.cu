/*
 * compute.cu - gs_cuda_compute_node: run one recorded op on the device.
 *
 * The node's sources are copied into device tensors (contiguous), the op's
 * launcher runs on a private stream, and the result comes back to the
 * caller's buffer. Index inputs are checked on the host first, so a bad
 * index is a GS_ERR_RUNTIME as on the CPU, never an out-of-bounds access.
 */
#include "common.cuh"

#define MAX_SRC 4

typedef struct {
    gs_dt src[MAX_SRC];
    gs_dt dst;
    cudaStream_t stream;
} node_run;

static gs_status to_device(const gs_tensor * t, gs_dt * d, cudaStream_t s) {
    memset(d, 0, sizeof(*d));
    if (!t) return GS_OK;
    if (!t->data) return gs_set_error(GS_ERR_STATE, "CUDA compute: source '%s' has no data", t->name);
    if (!gs_is_contiguous(t))
        return gs_set_error(GS_ERR_UNSUPPORTED, "CUDA compute: source '%s' is not contiguous", t->name);
    d->type = t->type;
    memcpy(d->ne, t->ne, sizeof(d->ne));
    const size_t n = gs_tensor_nbytes(t);
    GS_CUDA_TRY(cudaMallocAsync(&d->data, n, s), "source buffer");
    GS_CUDA_TRY(cudaMemcpyAsync(d->data, t->data, n, cudaMemcpyHostToDevice, s), "source upload");
    return GS_OK;
}

static gs_status check_indices(const gs_tensor * node) {
    const gs_tensor * idx = NULL;
    int64_t M = 0, T = 0;
    switch (node->op) {
        case GS_OP_MUL_MAT_SPARSE: idx = node->src[2]; M = node->src[0]->ne[1]; T = gs_nrows(node->src[1]); break;
        case GS_OP_AXPY_SPARSE: idx = node->src[2]; M = node->src[0]->ne[1]; T = gs_nrows(node->src[1]); break;
        case GS_OP_SPARSE_INDEX_REMAP: {
            const int32_t * mp = (const int32_t *) node->src[1]->data;
            const int64_t n_out = node->ne[0] - 1;
            M = node->src[0]->ne[0] - 1;
            for (int64_t m = 0, last = -1; m < M; m++) {
                if (mp[m] == -1) continue;
                if (mp[m] < -1 || mp[m] >= n_out || mp[m] <= last)
                    return gs_set_error(GS_ERR_RUNTIME, "CUDA sparse_index_remap: map entry %lld is %d; entries "
                                        "must be -1 or compact ids in [0, %lld), increasing", (long long) m, mp[m],
                                        (long long) n_out);
                last = mp[m];
            }
            idx = node->src[0];
            T = node->src[0]->ne[1];
            break;
        }
        case GS_OP_GET_ROWS:
        case GS_OP_SET_ROWS: {
            const gs_tensor * rows = node->src[1];
            const int64_t R = node->op == GS_OP_GET_ROWS ? node->src[0]->ne[1] : node->src[2]->ne[1];
            const int32_t * ix = (const int32_t *) rows->data;
            for (int64_t i = 0; i < gs_nelements(rows); i++)
                if (ix[i] < 0 || ix[i] >= R)
                    return gs_set_error(GS_ERR_RUNTIME, "CUDA %s: index %d at %lld is outside [0, %lld)",
                                        gs_op_name(node->op), ix[i], (long long) i, (long long) R);
            return GS_OK;
        }
        case GS_OP_ATTENTION: {
            const gs_tensor * pos = node->src[3];
            const int32_t * p = (const int32_t *) pos->data;
            for (int64_t i = 0; i < gs_nelements(pos); i++)
                if (p[i] < 0 || p[i] >= node->src[1]->ne[2])
                    return gs_set_error(GS_ERR_RUNTIME, "CUDA attention: pos[%lld] = %d is outside the cache",
                                        (long long) i, p[i]);
            return GS_OK;
        }
        default: return GS_OK;
    }
    return idx ? gs_cuda_check_index((const int32_t *) idx->data, M, T) : GS_OK;
}

gs_status gs_cuda_launch_node(const gs_tensor * node, gs_dt * s, gs_dt * dst, cudaStream_t stream) {
    float f;
    memcpy(&f, &node->op_params[0], sizeof(float));
    switch (node->op) {
        case GS_OP_CPY: return gs_cuda_cpy(&s[0], dst, stream);
        case GS_OP_GET_ROWS: return gs_cuda_get_rows(&s[0], &s[1], dst, stream);
        case GS_OP_SET_ROWS: return gs_cuda_set_rows(&s[2], &s[0], &s[1], stream);
        case GS_OP_ADD:
        case GS_OP_MUL: return gs_cuda_binary(node->op == GS_OP_ADD, &s[0], &s[1], dst, stream);
        case GS_OP_SCALE: return gs_cuda_scale(&s[0], f, dst, stream);
        case GS_OP_UNARY: return gs_cuda_unary(&s[0], (gs_unary_op) node->op_params[0], dst, stream);
        case GS_OP_GLU:
            return gs_cuda_glu(&s[0], &s[1], (gs_unary_op) node->op_params[0], node->op_params[1] != 0, dst,
                               stream);
        case GS_OP_RMS_NORM: return gs_cuda_rms_norm(&s[0], f, true, dst, stream);
        case GS_OP_NORM: return gs_cuda_rms_norm(&s[0], f, false, dst, stream);
        case GS_OP_ROPE:
            return gs_cuda_rope_ext(&s[0], &s[1], s[2].data ? &s[2] : NULL, node->op_params, dst, stream);
        case GS_OP_SOFT_MAX: return gs_cuda_soft_max(&s[0], s[1].data ? &s[1] : NULL, f, dst, stream);
        case GS_OP_MUL_MAT: return gs_cuda_mul_mat(&s[0], &s[1], dst, stream);
        case GS_OP_ATTENTION: {
            float cap;
            memcpy(&cap, &node->op_params[2], sizeof(float));
            return gs_cuda_attention(&s[0], &s[1], &s[2], &s[3], f, node->op_params[1], cap, dst, stream);
        }
        case GS_OP_SPARSE_INDEX: return gs_cuda_sparse_index(&s[0], f, dst, stream);
        case GS_OP_MUL_MAT_SPARSE: return gs_cuda_mul_mat_sparse(&s[0], &s[1], &s[2], &s[3], dst, stream);
        case GS_OP_AXPY_SPARSE: return gs_cuda_axpy_sparse(&s[0], &s[1], &s[2], &s[3], dst, stream);
        case GS_OP_SPARSE_INDEX_REMAP: return gs_cuda_sparse_index_remap(&s[0], &s[1], dst, stream);
        default:
            return gs_set_error(GS_ERR_UNSUPPORTED, "CUDA compute: op %s has no CUDA kernel", gs_op_name(node->op));
    }
}

bool gs_cuda_has_kernel(gs_op op) {
    switch (op) {
        case GS_OP_CPY: case GS_OP_GET_ROWS: case GS_OP_SET_ROWS: case GS_OP_ADD: case GS_OP_MUL:
        case GS_OP_SCALE: case GS_OP_UNARY: case GS_OP_GLU: case GS_OP_RMS_NORM: case GS_OP_NORM:
        case GS_OP_ROPE: case GS_OP_SOFT_MAX: case GS_OP_MUL_MAT: case GS_OP_ATTENTION:
        case GS_OP_SPARSE_INDEX: case GS_OP_MUL_MAT_SPARSE: case GS_OP_AXPY_SPARSE:
        case GS_OP_SPARSE_INDEX_REMAP:
            return true;
        default: return false;
    }
}

static gs_status run(gs_tensor * node, node_run * r, void * out, size_t out_size) {
    gs_status st = check_indices(node);
    /* a copy's src[1] is its destination: written, never read */
    const int n_src = node->op == GS_OP_CPY ? 1 : MAX_SRC;
    for (int i = 0; i < n_src && st == GS_OK; i++) st = to_device(node->src[i], &r->src[i], r->stream);
    if (st != GS_OK) return st;
    const size_t n = gs_tensor_nbytes(node);
    if (out_size != n)
        return gs_set_error(GS_ERR_INVALID_ARG, "gs_cuda_compute_node: out_size %zu, the result has %zu bytes",
                            out_size, n);
    r->dst.type = node->type;
    memcpy(r->dst.ne, node->ne, sizeof(r->dst.ne));
    GS_CUDA_TRY(cudaMallocAsync(&r->dst.data, n, r->stream), "result buffer");
    st = gs_cuda_launch_node(node, r->src, &r->dst, r->stream);
    if (st != GS_OK) return st;
    const void * result = node->op == GS_OP_SET_ROWS ? r->src[2].data : r->dst.data;
    GS_CUDA_TRY(cudaMemcpyAsync(out, result, n, cudaMemcpyDeviceToHost, r->stream), "result download");
    GS_CUDA_TRY(cudaStreamSynchronize(r->stream), "op");
    return GS_OK;
}

extern "C" gs_status gs_cuda_compute_node(int device, gs_tensor * node, void * out, size_t out_size) {
    GS_CHECK_ARG(node && out, "gs_cuda_compute_node: NULL argument");
    if (node->op == GS_OP_NONE || node->op == GS_OP_VIEW)
        return gs_set_error(GS_ERR_INVALID_ARG, "gs_cuda_compute_node: '%s' is not an op node", node->name);
    for (int i = MAX_SRC; i < GS_MAX_SRC; i++)
        GS_CHECK_ARG(!node->src[i], "gs_cuda_compute_node: op with more than %d sources", MAX_SRC);
    gs_status st = gs_cuda_use_device(device);
    if (st != GS_OK) return st;
    node_run r;
    memset(&r, 0, sizeof(r));
    GS_CUDA_TRY(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    st = run(node, &r, out, out_size);
    for (int i = 0; i < MAX_SRC; i++)
        if (r.src[i].data) cudaFreeAsync(r.src[i].data, r.stream);
    if (r.dst.data) cudaFreeAsync(r.dst.data, r.stream);
    cudaStreamSynchronize(r.stream);
    cudaStreamDestroy(r.stream);
    return st;
}
