/*
 * sparse.cu - the neuron-sparse FFN ops on the device (meaning of the
 * inputs: ggml_sparse.h, "Neuron-sparse FFN").
 *
 * sparse_index:   score F32 {M, T} -> idx I32 {M + 1, T}: count, then the
 *                 ascending ids with score >= threshold (NaN inactive).
 * mul_mat_sparse: a {K, M} any weight type, b F32 {K, T}, idx {M + 1, T} or
 *                 none, skip I32 {M} or none -> out F32 {M, T}; entries of
 *                 inactive or skipped neurons are 0. A per-token byte mask
 *                 (built from idx) says which rows a warp computes.
 * axpy_sparse:    a {E, M} (ffn_down_t rows), act F32 {M, T}, idx, skip ->
 *                 out F32 {E, T}: out[t][e] = sum over the listed active,
 *                 unskipped m (ascending) of act[t][m] * a[m][e].
 * The index is checked on the host before it is uploaded.
 */
#include "dequant.cuh"

__global__ void sparse_index_kernel(const float * score, float thr, int32_t * idx, int64_t M) {
    const int64_t t = blockIdx.x;
    if (threadIdx.x != 0) return;
    const float * s = score + t * M;
    int32_t * col = idx + t * (M + 1);
    int32_t c = 0;
    for (int64_t m = 0; m < M; m++)
        if (s[m] >= thr) col[++c] = (int32_t) m;
    col[0] = c;
}

gs_status gs_cuda_sparse_index(const gs_dt * score, float threshold, gs_dt * out, cudaStream_t s) {
    sparse_index_kernel<<<(unsigned) gs_dt_nrows(score), 32, 0, s>>>((const float *) score->data, threshold,
                                                                    (int32_t *) out->data, score->ne[0]);
    GS_CUDA_LAUNCHED("sparse_index");
    return GS_OK;
}

/* mask[t][m] = 1 for the ids of column t (mask zeroed before). Entries
 * out of range (an index the host did not check: the backend's jobs) are
 * dropped, never written out of bounds. */
__global__ void index_to_mask_kernel(const int32_t * idx, uint8_t * mask, int64_t M) {
    const int64_t t = blockIdx.x;
    const int32_t * col = idx + t * (M + 1);
    const int64_t n = col[0] < 0 ? 0 : (col[0] > M ? M : col[0]);
    for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
        const int32_t m = col[c + 1];
        if (m >= 0 && m < M) mask[t * M + m] = 1;
    }
}

template <int T>
__global__ void mul_mat_sparse_kernel(const uint8_t * a, size_t row_bytes, const float * b, const uint8_t * mask,
                                      const int32_t * skip, float * out, int64_t K, int64_t M) {
    const int64_t m = (int64_t) blockIdx.x * (blockDim.x / GS_CUDA_WARP) + threadIdx.x / GS_CUDA_WARP;
    const int64_t t = blockIdx.y;
    const int lane = threadIdx.x % GS_CUDA_WARP;
    if (m >= M) return;
    if ((mask && !mask[t * M + m]) || (skip && skip[m])) {
        if (lane == 0) out[t * M + m] = 0.0f;
        return;
    }
    const uint8_t * row = a + (size_t) m * row_bytes;
    const float * x = b + t * K;
    float s = 0.0f;
    for (int64_t i = lane; i < K; i += GS_CUDA_WARP) s += gs_dq<T>(row, i) * x[i];
    s = gs_warp_sum(s);
    if (lane == 0) out[t * M + m] = s;
}

gs_status gs_cuda_mul_mat_sparse(const gs_dt * a, const gs_dt * b, const gs_dt * idx, const gs_dt * skip,
                                 gs_dt * out, cudaStream_t s) {
    const int64_t K = a->ne[0], M = a->ne[1], T = gs_dt_nrows(b);
    uint8_t * mask = NULL;
    if (idx && idx->data) {
        GS_CUDA_TRY(cudaMallocAsync((void **) &mask, (size_t) (M * T), s), "sparse mask");
        cudaMemsetAsync(mask, 0, (size_t) (M * T), s);
        index_to_mask_kernel<<<(unsigned) T, 256, 0, s>>>((const int32_t *) idx->data, mask, M);
    }
    const int rows_per_block = 8;
    const dim3 grid((unsigned) ((M + rows_per_block - 1) / rows_per_block), (unsigned) T);
    const size_t rb = gs_type_row_size(a->type, K);
    const uint8_t * w = (const uint8_t *) a->data;
    const int32_t * sk = skip && skip->data ? (const int32_t *) skip->data : NULL;
    gs_status st = GS_OK;
    switch (a->type) {
#define SPARSE_CASE(TT_) case TT_: mul_mat_sparse_kernel<TT_><<<grid, rows_per_block * GS_CUDA_WARP, 0, s>>>( \
        w, rb, (const float *) b->data, mask, sk, (float *) out->data, K, M); break;
        SPARSE_CASE(GS_TYPE_F32) SPARSE_CASE(GS_TYPE_F16) SPARSE_CASE(GS_TYPE_BF16) SPARSE_CASE(GS_TYPE_Q4_0)
        SPARSE_CASE(GS_TYPE_Q4_1) SPARSE_CASE(GS_TYPE_Q5_0) SPARSE_CASE(GS_TYPE_Q5_1) SPARSE_CASE(GS_TYPE_Q8_0)
        SPARSE_CASE(GS_TYPE_Q4_K) SPARSE_CASE(GS_TYPE_Q5_K) SPARSE_CASE(GS_TYPE_Q6_K)
#undef SPARSE_CASE
        default: st = gs_set_error(GS_ERR_TYPE, "CUDA mul_mat_sparse: type %d is not a weight type", (int) a->type);
    }
    const cudaError_t launched = cudaGetLastError();
    if (mask) cudaFreeAsync(mask, s);
    if (st != GS_OK) return st;
    GS_CUDA_TRY(launched, "mul_mat_sparse");
    return GS_OK;
}

template <int T>
__global__ void axpy_sparse_kernel(const uint8_t * a, size_t row_bytes, const float * act, const int32_t * idx,
                                   const int32_t * skip, float * out, int64_t E, int64_t M) {
    const int64_t e = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t t = blockIdx.y;
    if (e >= E) return;
    const float * h = act + t * M;
    const int32_t * col = idx ? idx + t * (M + 1) : NULL;
    const int64_t n = col ? (col[0] < 0 ? 0 : (col[0] > M ? M : col[0])) : M;
    float s = 0.0f;
    for (int64_t c = 0; c < n; c++) {
        const int64_t m = col ? col[c + 1] : c;
        if (m < 0 || m >= M || (skip && skip[m])) continue;     /* out of range: dropped */
        s += h[m] * gs_dq<T>(a + (size_t) m * row_bytes, e);
    }
    out[t * E + e] = s;
}

gs_status gs_cuda_axpy_sparse(const gs_dt * a, const gs_dt * act, const gs_dt * idx, const gs_dt * skip,
                              gs_dt * out, cudaStream_t s) {
    const int64_t E = a->ne[0], M = a->ne[1], T = gs_dt_nrows(act);
    const dim3 grid((unsigned) ((E + 255) / 256), (unsigned) T);
    const size_t rb = gs_type_row_size(a->type, E);
    const uint8_t * w = (const uint8_t *) a->data;
    const int32_t * ix = idx && idx->data ? (const int32_t *) idx->data : NULL;
    const int32_t * sk = skip && skip->data ? (const int32_t *) skip->data : NULL;
    GS_CUDA_TYPE_SWITCH(a->type, (axpy_sparse_kernel<TT><<<grid, 256, 0, s>>>(w, rb, (const float *) act->data, ix, sk,
                                                                               (float *) out->data, E, M)))
    GS_CUDA_LAUNCHED("axpy_sparse");
    return GS_OK;
}
