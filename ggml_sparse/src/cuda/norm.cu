/*
 * norm.cu - row norms over ne0 of a contiguous F32 tensor: RMS norm
 * (a / sqrt(mean(a^2) + eps)) and layer norm without affine
 * ((a - mean) / sqrt(var + eps)). One block of 256 threads per row.
 */
#include "common.cuh"

#define NORM_THREADS 256

__device__ float block_sum(float v, float * sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    float t = 0.0f;
    for (int i = 0; i < NORM_THREADS / 32; i++) t += sh[i];
    return t;
}

__global__ void norm_kernel(const float * a, float * out, int64_t n, float eps, bool rms) {
    __shared__ float sh[NORM_THREADS / 32];
    const float * x = a + (int64_t) blockIdx.x * n;
    float * z = out + (int64_t) blockIdx.x * n;
    float mean = 0.0f;
    if (!rms) {
        float s = 0.0f;
        for (int64_t i = threadIdx.x; i < n; i += NORM_THREADS) s += x[i];
        mean = block_sum(s, sh) / (float) n;
    }
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += NORM_THREADS) ss += (x[i] - mean) * (x[i] - mean);
    const float scale = rsqrtf(block_sum(ss, sh) / (float) n + eps);
    for (int64_t i = threadIdx.x; i < n; i += NORM_THREADS) z[i] = (x[i] - mean) * scale;
}

gs_status gs_cuda_rms_norm(const gs_dt * a, float eps, bool rms, gs_dt * out, cudaStream_t s) {
    norm_kernel<<<(unsigned) gs_dt_nrows(a), NORM_THREADS, 0, s>>>((const float *) a->data, (float *) out->data,
                                                                  a->ne[0], eps, rms);
    GS_CUDA_LAUNCHED("norm");
    return GS_OK;
}
