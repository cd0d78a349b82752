/*
 * softmax.cu - softmax over rows of (a * scale + mask).
 *
 * a F32 {ne0, ne1, ne2, ne3} contiguous; mask NULL or F32 {ne0, >= ne1}
 * (row i1 of the mask is added to row i1 of every plane; -INFINITY hides a
 * slot). A fully masked row becomes zeros, as on the CPU. One block of 256
 * threads per row; the row is staged in the output.
 */
#include "common.cuh"

#define SM_THREADS 256

__device__ float block_reduce(float v, float * sh, bool is_max) {
    for (int o = 16; o > 0; o >>= 1) {
        const float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    __syncthreads();
    if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = v;
    __syncthreads();
    float t = sh[0];
    for (int i = 1; i < SM_THREADS / 32; i++) t = is_max ? fmaxf(t, sh[i]) : t + sh[i];
    return t;
}

__global__ void soft_max_kernel(const float * a, const float * mask, float * out, int64_t ne0, int64_t ne1,
                                float scale) {
    __shared__ float sh[SM_THREADS / 32];
    const int64_t r = blockIdx.x;
    const float * x = a + r * ne0;
    const float * m = mask ? mask + (r % ne1) * ne0 : NULL;
    float * z = out + r * ne0;
    float mx = -INFINITY;
    for (int64_t i = threadIdx.x; i < ne0; i += SM_THREADS) {
        z[i] = x[i] * scale + (m ? m[i] : 0.0f);
        mx = fmaxf(mx, z[i]);
    }
    mx = block_reduce(mx, sh, true);
    float sum = 0.0f;
    for (int64_t i = threadIdx.x; i < ne0; i += SM_THREADS) {
        z[i] = mx == -INFINITY ? 0.0f : expf(z[i] - mx);
        sum += z[i];
    }
    sum = block_reduce(sum, sh, false);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int64_t i = threadIdx.x; i < ne0; i += SM_THREADS) z[i] *= inv;
}

gs_status gs_cuda_soft_max(const gs_dt * a, const gs_dt * mask, float scale, gs_dt * out, cudaStream_t s) {
    soft_max_kernel<<<(unsigned) gs_dt_nrows(a), SM_THREADS, 0, s>>>(
        (const float *) a->data, mask ? (const float *) mask->data : NULL, (float *) out->data, a->ne[0],
        a->ne[1], scale);
    GS_CUDA_LAUNCHED("soft_max");
    return GS_OK;
}
