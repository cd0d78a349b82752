/*
 * rope.cu - rotary position embedding.
 *
 * a F32 {head_dim, n_head, n_tokens} (contiguous), pos I32 {n_tokens},
 * ff NULL or F32 {n_dims/2} frequency factors; params: the node's op_params
 * as ops_rope.c reads them (n_dims, mode, freq_base, freq_scale, mscale,
 * ext_factor, corr_lo, corr_hi, has_freq_factors). GS_ROPE_NORMAL rotates
 * (x[2i], x[2i+1]), GS_ROPE_NEOX (x[i], x[i + n_dims/2]). Pair i of a head
 * at position p turns by t_i = freq_scale * t_e, t_e = theta_i / ff[i], with
 * theta_0 = p and theta_{i+1} = theta_i * freq_base^(-2/n_dims) (the ratio
 * computed on the host); with YaRN (ext_factor != 0) by the blend
 * fma(t_i, 1 - m, t_e * m), m = ext_factor * (1 - clamp((i - corr_lo) /
 * max(0.001, corr_hi - corr_lo), 0, 1)); cos and sin are multiplied by
 * mscale. Every product, quotient and the FMA are rounded as the CPU's
 * (ops_rope.c), so the angles equal the CPU's bit for bit; only cosf/sinf
 * differ by an ulp or so. Elements past n_dims are copied. One thread per
 * pair or per two copied elements.
 */
#include "common.cuh"

typedef struct {
    int n_dims, mode;
    float theta_scale, freq_scale, mscale, ext_factor, corr_lo, corr_span;
} rope_args;

__global__ void rope_kernel(const float * a, const int32_t * pos, const float * ff, float * out, int64_t ne0,
                            int64_t ne1, int64_t n_tok, rope_args r) {
    const int64_t half = ne0 / 2;   /* work items per head row: pairs, then copies */
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= half * ne1 * n_tok) return;
    const int64_t c = i % half, row = i / half, t = row / ne1;
    const int n_dims = r.n_dims;
    const float * x = a + row * ne0;
    float * z = out + row * ne0;
    if (c >= n_dims / 2) {   /* the tail past n_dims: two elements per item */
        const int64_t e = n_dims + 2 * (c - n_dims / 2);
        z[e] = x[e];
        if (e + 1 < ne0) z[e + 1] = x[e + 1];
        return;
    }
    float theta = (float) pos[t];
    for (int64_t k = 0; k < c; k++) theta = __fmul_rn(theta, r.theta_scale);
    const float te = ff ? __fdiv_rn(theta, ff[c]) : theta;
    float angle = __fmul_rn(r.freq_scale, te);
    if (r.ext_factor != 0.0f) {
        const float y = __fdiv_rn(__fsub_rn((float) c, r.corr_lo), r.corr_span);
        const float y01 = 0.0f > y ? 0.0f : y;
        const float m = __fmul_rn(__fsub_rn(1.0f, 1.0f < y01 ? 1.0f : y01), r.ext_factor);
        angle = __fmaf_rn(angle, __fsub_rn(1.0f, m), __fmul_rn(te, m));
    }
    const float cs = __fmul_rn(cosf(angle), r.mscale), sn = __fmul_rn(sinf(angle), r.mscale);
    const int64_t e0 = r.mode == GS_ROPE_NEOX ? c : 2 * c;
    const int64_t e1 = r.mode == GS_ROPE_NEOX ? c + n_dims / 2 : 2 * c + 1;
    const float x0 = x[e0], x1 = x[e1];
    z[e0] = fmaf(x0, cs, -__fmul_rn(x1, sn));   /* the CPU's operations (ops_rope.c) */
    z[e1] = fmaf(x0, sn, __fmul_rn(x1, cs));
}

/* The rope with its frequency factors: ff NULL or the node's src[2] on the
 * device (F32, n_dims/2 elements). */
gs_status gs_cuda_rope_ext(const gs_dt * a, const gs_dt * pos, const gs_dt * ff, const int32_t * params,
                           gs_dt * out, cudaStream_t s) {
    rope_args r;
    float freq_base, corr_hi;
    r.n_dims = params[0];
    r.mode = params[1];
    memcpy(&freq_base, &params[2], sizeof(float));
    memcpy(&r.freq_scale, &params[3], sizeof(float));
    memcpy(&r.mscale, &params[4], sizeof(float));
    memcpy(&r.ext_factor, &params[5], sizeof(float));
    memcpy(&r.corr_lo, &params[6], sizeof(float));
    memcpy(&corr_hi, &params[7], sizeof(float));
    r.corr_span = 0.001f > corr_hi - r.corr_lo ? 0.001f : corr_hi - r.corr_lo;
    const int64_t ne0 = a->ne[0], ne1 = a->ne[1], n_tok = a->ne[2] * a->ne[3];
    if (ne0 % 2 != 0 || r.n_dims % 2 != 0 || r.n_dims > ne0)
        return gs_set_error(GS_ERR_SHAPE, "CUDA rope: head size %lld / n_dims %d must be even, n_dims <= head",
                            (long long) ne0, r.n_dims);
    if (params[8] && !(ff && ff->data))
        return gs_set_error(GS_ERR_UNSUPPORTED, "CUDA rope: the node has frequency factors but none reached the "
                            "device (the caller must pass the node's src[2] to gs_cuda_rope_ext)");
    if (ff && ff->data && (ff->type != GS_TYPE_F32 || gs_dt_nel(ff) != r.n_dims / 2))
        return gs_set_error(GS_ERR_SHAPE, "CUDA rope: freq_factors need n_dims/2 f32");
    r.theta_scale = powf(freq_base, -2.0f / (float) r.n_dims);   /* as the CPU's rope */
    const int64_t n = ne0 / 2 * ne1 * n_tok;
    rope_kernel<<<(unsigned) ((n + 255) / 256), 256, 0, s>>>((const float *) a->data, (const int32_t *) pos->data,
                                                             ff && ff->data ? (const float *) ff->data : NULL,
                                                             (float *) out->data, ne0, ne1, n_tok, r);
    GS_CUDA_LAUNCHED("rope");
    return GS_OK;
}

gs_status gs_cuda_rope(const gs_dt * a, const gs_dt * pos, const int32_t * params, gs_dt * out,
                       cudaStream_t s) {
    return gs_cuda_rope_ext(a, pos, NULL, params, out, s);
}
