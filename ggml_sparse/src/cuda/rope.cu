/*
 * rope.cu - rotary position embedding.
 *
 * a F32 {head_dim, n_head, n_tokens} (contiguous), pos I32 {n_tokens};
 * params: n_dims, mode (GS_ROPE_NORMAL rotates (x[2i], x[2i+1]), GS_ROPE_NEOX
 * (x[i], x[i + n_dims/2])), freq_base, freq_scale (float bits). Pair i of a
 * head at position p turns by freq_scale * theta_i with theta_0 = p and
 * theta_{i+1} = theta_i * freq_base^(-2/n_dims), the ratio computed on the
 * host and the products taken in the CPU's order, so the angles equal the
 * CPU's bit for bit; elements past n_dims are copied. One thread per pair
 * or per two copied elements.
 */
#include "common.cuh"

__global__ void rope_kernel(const float * a, const int32_t * pos, float * out, int64_t ne0, int64_t ne1,
                            int64_t n_tok, int n_dims, int mode, float theta_scale, float freq_scale) {
    const int64_t half = ne0 / 2;   /* work items per head row: pairs, then copies */
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= half * ne1 * n_tok) return;
    const int64_t c = i % half, row = i / half, t = row / ne1;
    const float * x = a + row * ne0;
    float * z = out + row * ne0;
    if (c >= n_dims / 2) {   /* the tail past n_dims: two elements per item */
        const int64_t e = n_dims + 2 * (c - n_dims / 2);
        z[e] = x[e];
        if (e + 1 < ne0) z[e + 1] = x[e + 1];
        return;
    }
    float theta = (float) pos[t];
    for (int64_t k = 0; k < c; k++) theta = __fmul_rn(theta, theta_scale);
    const float angle = __fmul_rn(freq_scale, theta);
    const float cs = cosf(angle), sn = sinf(angle);
    const int64_t e0 = mode == GS_ROPE_NEOX ? c : 2 * c;
    const int64_t e1 = mode == GS_ROPE_NEOX ? c + n_dims / 2 : 2 * c + 1;
    const float x0 = x[e0], x1 = x[e1];
    z[e0] = fmaf(x0, cs, -__fmul_rn(x1, sn));   /* the CPU's operations (ops_rope.c) */
    z[e1] = fmaf(x0, sn, __fmul_rn(x1, cs));
}

gs_status gs_cuda_rope(const gs_dt * a, const gs_dt * pos, const int32_t * params, gs_dt * out,
                       cudaStream_t s) {
    float freq_base, freq_scale;
    memcpy(&freq_base, &params[2], sizeof(float));
    memcpy(&freq_scale, &params[3], sizeof(float));
    const int64_t ne0 = a->ne[0], ne1 = a->ne[1], n_tok = a->ne[2] * a->ne[3];
    if (ne0 % 2 != 0 || params[0] % 2 != 0 || params[0] > ne0)
        return gs_set_error(GS_ERR_SHAPE, "CUDA rope: head size %lld / n_dims %d must be even, n_dims <= head",
                            (long long) ne0, params[0]);
    const int64_t n = ne0 / 2 * ne1 * n_tok;
    const float theta_scale = powf(freq_base, -2.0f / (float) params[0]);   /* as the CPU's rope */
    rope_kernel<<<(unsigned) ((n + 255) / 256), 256, 0, s>>>((const float *) a->data, (const int32_t *) pos->data,
                                                             (float *) out->data, ne0, ne1, n_tok, params[0],
                                                             params[1], theta_scale, freq_scale);
    GS_CUDA_LAUNCHED("rope");
    return GS_OK;
}
