/*
 * sparse_remap.cu - gs_sparse_index_remap on the device: an active-neuron
 * index restricted to a slice of the neurons, in the slice's compact ids
 * (format and checks in ggml_sparse.h; the CPU op is
 * cpu/ops_sparse_remap.c). One thread per token walks its column in order,
 * so the output stays ascending as the map's entries ascend.
 *
 * The kernel never reads or writes out of bounds whatever the index holds
 * (counts clamped, ids and map entries range-checked, bad ones dropped);
 * the CPU op's errors for a bad map or index are raised by the host checks
 * of gs_cuda_compute_node (compute.cu), not here.
 */
#include "common.cuh"

static __global__ void remap_kernel(const int32_t * idx, const int32_t * map, int32_t * out, int64_t M,
                                    int64_t n_tokens, int64_t n_out) {
    const int64_t t = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_tokens) return;
    const int32_t * col = idx + t * (M + 1);
    int32_t * dst = out + t * (n_out + 1);
    int64_t n = col[0];
    if (n < 0) n = 0;
    if (n > M) n = M;
    int32_t c = 0;
    for (int64_t e = 1; e <= n && c < n_out; e++) {
        const int32_t m = col[e];
        if (m < 0 || m >= M) continue;
        const int32_t v = map[m];
        if (v >= 0 && v < n_out) dst[1 + c++] = v;
    }
    dst[0] = c;
}

gs_status gs_cuda_sparse_index_remap(const gs_dt * idx, const gs_dt * map, gs_dt * out, cudaStream_t s) {
    if (idx->type != GS_TYPE_I32 || map->type != GS_TYPE_I32 || out->type != GS_TYPE_I32)
        return gs_set_error(GS_ERR_UNSUPPORTED, "CUDA sparse_index_remap: index, map and result must be I32");
    const int64_t M = idx->ne[0] - 1, n_tokens = gs_dt_nrows(idx), n_out = out->ne[0] - 1;
    if (M < 1 || gs_dt_nel(map) != M || gs_dt_nrows(out) != n_tokens || n_out < 0)
        return gs_set_error(GS_ERR_INVALID_ARG, "CUDA sparse_index_remap: shapes do not match (index {%lld, %lld}, "
                            "map of %lld, result {%lld, %lld})", (long long) idx->ne[0], (long long) n_tokens,
                            (long long) gs_dt_nel(map), (long long) out->ne[0], (long long) gs_dt_nrows(out));
    if (n_tokens == 0) return GS_OK;
    const int threads = 128;
    const unsigned blocks = (unsigned) ((n_tokens + threads - 1) / threads);
    remap_kernel<<<blocks, threads, 0, s>>>((const int32_t *) idx->data, (const int32_t *) map->data,
                                            (int32_t *) out->data, M, n_tokens, n_out);
    GS_CUDA_LAUNCHED("sparse_index_remap");
    return GS_OK;
}
