/*
 * attention.cu - causal attention over a KV cache with grouped-query heads.
 *
 * q F32 {D, H, T}; k, v F32 or F16 {D, Hkv, n_ctx} (contiguous); pos I32
 * {T}: token t sees cache slots 0..pos[t] (checked on the host before the
 * launch), with a window n_swa > 0 only those after pos[t] - n_swa; scores
 * are scale * q.k, soft-capped (softcap > 0: softcap * tanh(s / softcap)).
 * Head h reads kv head h / (H / Hkv). out F32 {D, H, T}.
 * One block per (head, token): scores for every visible slot go to a
 * global scratch row, then softmax, then each thread sums one or more of
 * the D output elements over the slots.
 */
#include "dequant.cuh"

#define ATT_THREADS 128

template <int KT>
__global__ void attention_kernel(const float * q, const uint8_t * k, const uint8_t * v, const int32_t * pos,
                                 float * out, float * scores, int64_t D, int64_t H, int64_t Hkv, int64_t n_ctx,
                                 float scale, int n_swa, float softcap) {
    __shared__ float bcast;
    const int64_t h = blockIdx.x, t = blockIdx.y, hk = h / (H / Hkv);
    /* a position outside the cache (not checked on the host in the backend's
     * jobs) is clamped into it: never a read out of bounds */
    const int64_t n_kv = pos[t] < 0 ? 1 : (pos[t] >= n_ctx ? n_ctx : (int64_t) pos[t] + 1);
    const int64_t j0 = n_swa > 0 && n_kv > n_swa ? n_kv - n_swa : 0;   /* first visible slot */
    const float inv_cap = softcap > 0.0f ? 1.0f / softcap : 0.0f;
    const float * qv = q + (t * H + h) * D;
    float * sc = scores + (t * H + h) * n_ctx;
    const size_t row_bytes = (size_t) D * (KT == GS_TYPE_F32 ? 4 : 2);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    /* scores: one warp per slot */
    for (int64_t j = j0 + warp; j < n_kv; j += ATT_THREADS / 32) {
        const uint8_t * kr = k + (size_t) (j * Hkv + hk) * row_bytes;
        float s = 0.0f;
        for (int64_t d = lane; d < D; d += 32) s += qv[d] * gs_dq<KT>(kr, d);
        s = gs_warp_sum(s);
        s *= scale;
        if (softcap > 0.0f) s = softcap * tanhf(s * inv_cap);
        if (lane == 0) sc[j] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float mx = -INFINITY, sum = 0.0f;
        for (int64_t j = j0; j < n_kv; j++) mx = fmaxf(mx, sc[j]);
        for (int64_t j = j0; j < n_kv; j++) { sc[j] = expf(sc[j] - mx); sum += sc[j]; }
        bcast = 1.0f / sum;
    }
    __syncthreads();
    const float inv = bcast;
    for (int64_t d = threadIdx.x; d < D; d += ATT_THREADS) {
        float acc = 0.0f;
        for (int64_t j = j0; j < n_kv; j++)
            acc += sc[j] * gs_dq<KT>(v + (size_t) (j * Hkv + hk) * row_bytes, d);
        out[(t * H + h) * D + d] = acc * inv;
    }
}

gs_status gs_cuda_attention(const gs_dt * q, const gs_dt * k, const gs_dt * v, const gs_dt * pos,
                            float scale, int n_swa, float softcap, gs_dt * out, cudaStream_t s) {
    const int64_t D = q->ne[0], H = q->ne[1], T = q->ne[2], Hkv = k->ne[1], n_ctx = k->ne[2];
    if (k->type != v->type || (k->type != GS_TYPE_F32 && k->type != GS_TYPE_F16))
        return gs_set_error(GS_ERR_TYPE, "CUDA attention: k and v must both be F32 or F16");
    float * scores;
    GS_CUDA_TRY(cudaMallocAsync((void **) &scores, (size_t) (T * H * n_ctx) * sizeof(float), s), "attention scratch");
    const dim3 grid((unsigned) H, (unsigned) T);
    const float * qd = (const float *) q->data;
    const uint8_t * kd = (const uint8_t *) k->data, * vd = (const uint8_t *) v->data;
    const int32_t * pd = (const int32_t *) pos->data;
    if (k->type == GS_TYPE_F32)
        attention_kernel<GS_TYPE_F32><<<grid, ATT_THREADS, 0, s>>>(qd, kd, vd, pd, (float *) out->data, scores, D, H,
                                                                  Hkv, n_ctx, scale, n_swa, softcap);
    else
        attention_kernel<GS_TYPE_F16><<<grid, ATT_THREADS, 0, s>>>(qd, kd, vd, pd, (float *) out->data, scores, D, H,
                                                                  Hkv, n_ctx, scale, n_swa, softcap);
    const cudaError_t launched = cudaGetLastError();
    cudaFreeAsync(scores, s);
    GS_CUDA_TRY(launched, "attention");
    return GS_OK;
}
