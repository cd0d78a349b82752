/*
 * rows.cu - row gather (get_rows), row scatter (set_rows) and type copies.
 *
 * get_rows: a {n, R} any weight type, idx I32 {k} -> out F32 {n, k},
 *           out row i = a row idx[i] dequantized.
 * set_rows: dst {n, R, P2, P3} F32/F16, src F32 {n, k, P2, P3}, idx I32 (one per
 *           source row): dst row idx[r] of row r's plane = source row r.
 * cpy:      a (any weight type) -> out F32/F16 of the same element count.
 * Indices are checked on the host before the launch (gs_cuda_compute_node).
 */
#include "dequant.cuh"

template <int T>
__global__ void get_rows_kernel(const uint8_t * a, size_t row_bytes, int64_t R, const int32_t * idx, float * out,
                                int64_t n, int64_t k) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * k) return;
    const int32_t r = idx[i / n];
    /* an index outside [0, R) (checked on the host where the host holds
     * the index) reads nothing: the row comes out as zeros */
    out[i] = r >= 0 && r < R ? gs_dq<T>(a + (size_t) r * row_bytes, i % n) : 0.0f;
}

gs_status gs_cuda_get_rows(const gs_dt * a, const gs_dt * idx, gs_dt * out, cudaStream_t s) {
    const int64_t n = a->ne[0], k = idx->ne[0];
    const size_t rb = gs_type_row_size(a->type, n);
    const unsigned grid = (unsigned) ((n * k + 255) / 256);
    const uint8_t * w = (const uint8_t *) a->data;
    const int32_t * ix = (const int32_t *) idx->data;
    float * o = (float *) out->data;
    GS_CUDA_TYPE_SWITCH(a->type, (get_rows_kernel<TT><<<grid, 256, 0, s>>>(w, rb, a->ne[1], ix, o, n, k)))
    GS_CUDA_LAUNCHED("get_rows");
    return GS_OK;
}

__global__ void set_rows_kernel(uint8_t * dst, bool f16, int64_t R, const float * src, const int32_t * idx,
                                int64_t n, int64_t k, int64_t planes) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * k * planes) return;
    const int64_t e = i % n, p = i / (n * k), r = idx[i / n];
    if (r < 0 || r >= R) return;                      /* out of range: nothing written */
    const int64_t o = (p * R + r) * n + e;            /* one index per source row */
    if (f16) ((__half *) dst)[o] = __float2half_rn(src[i]);
    else ((float *) dst)[o] = src[i];
}

gs_status gs_cuda_set_rows(gs_dt * dst, const gs_dt * src, const gs_dt * idx, cudaStream_t s) {
    if (dst->type != GS_TYPE_F32 && dst->type != GS_TYPE_F16)
        return gs_set_error(GS_ERR_TYPE, "CUDA set_rows: destination must be F32 or F16");
    const int64_t n = src->ne[0], k = src->ne[1], planes = src->ne[2] * src->ne[3];
    set_rows_kernel<<<(unsigned) ((n * k * planes + 255) / 256), 256, 0, s>>>(
        (uint8_t *) dst->data, dst->type == GS_TYPE_F16, dst->ne[1], (const float *) src->data,
        (const int32_t *) idx->data, n, k, planes);
    GS_CUDA_LAUNCHED("set_rows");
    return GS_OK;
}

__global__ void to_f16_kernel(const float * x, __half * y, int64_t n) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2half_rn(x[i]);
}

gs_status gs_cuda_cpy(const gs_dt * a, gs_dt * out, cudaStream_t s) {
    if (out->type == GS_TYPE_F32) return gs_cuda_dequantize(a, (float *) out->data, s);
    if (out->type != GS_TYPE_F16)
        return gs_set_error(GS_ERR_UNSUPPORTED, "CUDA cpy: only F32 and F16 destinations are built");
    const int64_t n = gs_dt_nel(a);
    float * tmp;
    GS_CUDA_TRY(cudaMallocAsync((void **) &tmp, (size_t) n * sizeof(float), s), "cpy scratch");
    gs_status st = gs_cuda_dequantize(a, tmp, s);
    if (st == GS_OK) to_f16_kernel<<<(unsigned) ((n + 255) / 256), 256, 0, s>>>(tmp, (__half *) out->data, n);
    const cudaError_t launched = cudaGetLastError();
    cudaFreeAsync(tmp, s);
    if (st != GS_OK) return st;
    GS_CUDA_TRY(launched, "cpy");
    return GS_OK;
}
