/*
 * mul_mat.cu - dense products for every weight type.
 *
 * a {K, M} (weights, any type, contiguous), b F32 {K, N} (N = all rows of b,
 * dims 2 and 3 flattened) -> out F32 {M, N}: out[n][m] = a row m . b row n.
 *   N == 1 (decode): GEMV, one warp per weight row, each lane summing
 *          every 32nd weight, then a warp reduction.
 *   N > 1 (prompt): a 32x32 tiled product; each K chunk of the weight tile
 *          is dequantized into shared memory once and reused by 32 tokens.
 * The toolkit here ships no cuBLAS, so the batched product is our own
 * kernel; activations stay F32 (the CPU quantizes them to Q8, so results
 * agree to the per-type error budgets of the tests, not bit for bit).
 */
#include "dequant.cuh"

template <int T>
__global__ void gemv_kernel(const uint8_t * a, size_t row_bytes, const float * x, float * out,
                            int64_t K, int64_t M) {
    const int64_t m = (int64_t) blockIdx.x * (blockDim.x / GS_CUDA_WARP) + threadIdx.x / GS_CUDA_WARP;
    const int lane = threadIdx.x % GS_CUDA_WARP;
    if (m >= M) return;
    const uint8_t * row = a + (size_t) m * row_bytes;
    float s = 0.0f;
    for (int64_t i = lane; i < K; i += GS_CUDA_WARP) s += gs_dq<T>(row, i) * x[i];
    s = gs_warp_sum(s);
    if (lane == 0) out[m] = s;
}

#define TILE 32

template <int T>
__global__ void gemm_kernel(const uint8_t * a, size_t row_bytes, const float * b, float * out,
                            int64_t K, int64_t M, int64_t N) {
    __shared__ float wa[TILE][TILE + 1];   /* [m][k] */
    __shared__ float xb[TILE][TILE + 1];   /* [n][k] */
    const int tx = threadIdx.x, ty = threadIdx.y;   /* tx: m (and k when loading), ty: n */
    const int64_t m0 = (int64_t) blockIdx.x * TILE, n0 = (int64_t) blockIdx.y * TILE;
    float s = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += TILE) {
        /* thread (tx, ty) loads weight (m0 + ty, k0 + tx) and token (n0 + ty, k0 + tx) */
        const int64_t k = k0 + tx;
        wa[ty][tx] = (m0 + ty < M && k < K) ? gs_dq<T>(a + (size_t) (m0 + ty) * row_bytes, k) : 0.0f;
        xb[ty][tx] = (n0 + ty < N && k < K) ? b[(n0 + ty) * K + k] : 0.0f;
        __syncthreads();
        for (int kk = 0; kk < TILE; kk++) s += wa[tx][kk] * xb[ty][kk];
        __syncthreads();
    }
    if (m0 + tx < M && n0 + ty < N) out[(n0 + ty) * M + m0 + tx] = s;
}

gs_status gs_cuda_mul_mat(const gs_dt * a, const gs_dt * b, gs_dt * out, cudaStream_t s) {
    const int64_t K = a->ne[0], M = a->ne[1], N = gs_dt_nrows(b);
    if (a->ne[2] * a->ne[3] != 1)
        return gs_set_error(GS_ERR_UNSUPPORTED, "CUDA mul_mat: weights must be 2-D");
    const size_t rb = gs_type_row_size(a->type, K);
    const uint8_t * w = (const uint8_t *) a->data;
    const float * x = (const float *) b->data;
    float * y = (float *) out->data;
    if (N == 1) {
        const int rows_per_block = 8;
        const dim3 grid((unsigned) ((M + rows_per_block - 1) / rows_per_block));
        GS_CUDA_TYPE_SWITCH(a->type, (gemv_kernel<TT><<<grid, rows_per_block * GS_CUDA_WARP, 0, s>>>(w, rb, x, y, K, M)))
    } else {
        const dim3 grid((unsigned) ((M + TILE - 1) / TILE), (unsigned) ((N + TILE - 1) / TILE));
        const dim3 block(TILE, TILE);
        GS_CUDA_TYPE_SWITCH(a->type, (gemm_kernel<TT><<<grid, block, 0, s>>>(w, rb, x, y, K, M, N)))
    }
    GS_CUDA_LAUNCHED("mul_mat");
    return GS_OK;
}

template <int T>
__global__ void dequant_kernel(const uint8_t * a, size_t row_bytes, float * out, int64_t K, int64_t nrows) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= K * nrows) return;
    out[i] = gs_dq<T>(a + (size_t) (i / K) * row_bytes, i % K);
}

gs_status gs_cuda_dequantize(const gs_dt * a, float * out, cudaStream_t s) {
    const int64_t K = a->ne[0], n = gs_dt_nel(a);
    const size_t rb = gs_type_row_size(a->type, K);
    const unsigned grid = (unsigned) ((n + 255) / 256);
    const uint8_t * w = (const uint8_t *) a->data;
    GS_CUDA_TYPE_SWITCH(a->type, (dequant_kernel<TT><<<grid, 256, 0, s>>>(w, rb, out, K, gs_dt_nrows(a))))
    GS_CUDA_LAUNCHED("dequantize");
    return GS_OK;
}
