/*
 * ops_rope.c - rotary position embedding (RoPE).
 *
 * a   F32 {head_dim, n_head, n_tokens, ne3}, any strides: one row per head.
 * pos I32 {n_tokens}, contiguous: token i2 sits at position pos[i2] (the
 *     same positions serve every i3).
 * ff  src[2]: NULL or F32 {n_dims/2} frequency factors: pair i's angle is
 *     divided by ff[i] (Llama 3.1's long-context RoPE).
 * op_params: n_dims, mode, freq_base, freq_scale, mscale, ext_factor,
 *     corr_lo, corr_hi (float bits), has_freq_factors; gs_rope_ext computes
 *     mscale and YaRN's correction dims from gs_rope_params.
 *
 * The first n_dims elements of each row are rotated in n_dims/2 pairs; pair i
 * of a token at position pos turns by
 *   t_e = pos * freq_base^(-2i / n_dims) / ff[i]     (extrapolated)
 *   t_i = freq_scale * t_e                           (interpolated)
 *   t   = t_i, or with YaRN (ext_factor != 0) the blend
 *   t   = t_i * (1 - m) + t_e * m,
 *   m   = ext_factor * (1 - clamp((i - corr_lo) / max(0.001, corr_hi - corr_lo), 0, 1))
 *   GS_ROPE_NORMAL pairs (x[2i], x[2i+1])         (llama)
 *   GS_ROPE_NEOX   pairs (x[i],  x[i + n_dims/2])  (gpt-neox, qwen2)
 *   (x0, x1) -> (x0 c - x1 s, x0 s + x1 c),  c = mscale cos t, s = mscale sin t
 * Elements n_dims..head_dim-1 are copied. dst is contiguous, a's shape.
 *
 * The angles follow llama.cpp's float recipe exactly (theta_0 = pos,
 * theta_{i+1} = theta_i * base^(-2/n_dims) in float, the blend as its
 * compiled rope_yarn: one FMA of t_i and (1 - m) plus the product t_e m;
 * cosf/sinf, times mscale), so both engines rotate by bit-identical cos/sin.
 * With mscale 1 and no YaRN the products by mscale are exact: plain RoPE.
 * Threads split rows; a thread computes a token's cos/sin for a chunk of
 * PAIR_CHUNK pairs once and applies them to all of that token's heads it
 * owns.
 */
#include "../gs_internal.h"

#include <math.h>

#define PAIR_CHUNK 64

typedef struct {
    int64_t pair_step;  /* element distance between consecutive pairs       */
    int64_t partner;    /* element distance from a pair's first to second   */
} pair_layout;

/* Rotate pairs [c0, c0 + n) of one row: src stride `sa` elements, dst
 * contiguous. cs/sn hold cos/sin of those pairs. */
static inline __attribute__((always_inline)) void rotate_chunk(const float * src, size_t sa, float * dst, pair_layout L, int64_t c0,
                         int64_t n, const float * cs, const float * sn) {
    for (int64_t c = 0; c < n; c++) {
        const int64_t e0 = (c0 + c) * L.pair_step;
        const int64_t e1 = e0 + L.partner;
        const float x0 = src[e0 * (int64_t) sa];
        const float x1 = src[e1 * (int64_t) sa];
        /* llama.cpp's compiled rotation fuses the first product of each
         * line into an FMA; the same operations give the same bits */
        dst[e0] = fmaf(x0, cs[c], -(x1 * sn[c]));
        dst[e1] = fmaf(x0, sn[c], x1 * cs[c]);
    }
}

static inline __attribute__((always_inline)) void rope_body(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const int32_t * pos = (const int32_t *) dst->src[1]->data;
    const float * ff = dst->src[2] ? (const float *) dst->src[2]->data : NULL;
    const int n_dims = dst->op_params[0];
    const int mode = dst->op_params[1];
    float freq_base, freq_scale, mscale, ext_factor, corr_lo, corr_hi;
    memcpy(&freq_base, &dst->op_params[2], sizeof(float));
    memcpy(&freq_scale, &dst->op_params[3], sizeof(float));
    memcpy(&mscale, &dst->op_params[4], sizeof(float));
    memcpy(&ext_factor, &dst->op_params[5], sizeof(float));
    memcpy(&corr_lo, &dst->op_params[6], sizeof(float));
    memcpy(&corr_hi, &dst->op_params[7], sizeof(float));
    const float corr_span = 0.001f > corr_hi - corr_lo ? 0.001f : corr_hi - corr_lo;

    const int64_t ne0 = a->ne[0], ne1 = a->ne[1], ne2 = a->ne[2];
    const int64_t n_pairs = n_dims / 2;
    const size_t sa = a->nb[0] / sizeof(float);
    const pair_layout L = mode == GS_ROPE_NEOX ? (pair_layout) { 1, n_pairs }
                                               : (pair_layout) { 2, 1 };
    const float theta_scale = powf(freq_base, -2.0f / (float) n_dims);

    int64_t r0, r1;
    gs_split_rows(gs_nrows(a), p->ith, p->nth, &r0, &r1);
    float cs[PAIR_CHUNK], sn[PAIR_CHUNK];
    for (int64_t c0 = 0; c0 < n_pairs; c0 += PAIR_CHUNK) {
        const int64_t n = n_pairs - c0 < PAIR_CHUNK ? n_pairs - c0 : PAIR_CHUNK;
        for (int64_t r = r0; r < r1;) {
            /* rows r .. r_end-1 are heads of one token (same i2, i3) */
            const int64_t i1 = r % ne1, i2 = (r / ne1) % ne2, i3 = r / (ne1 * ne2);
            const int64_t r_end = r + (ne1 - i1) < r1 ? r + (ne1 - i1) : r1;
            float theta = (float) pos[i2];
            for (int64_t c = 0; c < c0; c++) theta *= theta_scale;
            for (int64_t c = 0; c < n; c++) {
                const float t = ff ? theta / ff[c0 + c] : theta;
                float angle = freq_scale * t;
                if (ext_factor != 0.0f) {
                    const float y = ((float) (c0 + c) - corr_lo) / corr_span;
                    const float y01 = 0.0f > y ? 0.0f : y;
                    const float m = (1.0f - (1.0f < y01 ? 1.0f : y01)) * ext_factor;
                    angle = fmaf(angle, 1.0f - m, t * m);
                }
                cs[c] = cosf(angle) * mscale;
                sn[c] = sinf(angle) * mscale;
                theta *= theta_scale;
            }
            const uint8_t * src_tok = (const uint8_t *) a->data + i2 * a->nb[2] + i3 * a->nb[3];
            float * dst_tok = (float *) ((uint8_t *) dst->data + i2 * dst->nb[2] + i3 * dst->nb[3]);
            for (int64_t h = i1; h < i1 + (r_end - r); h++) {
                const float * x = (const float *) (src_tok + h * a->nb[1]);
                rotate_chunk(x, sa, dst_tok + h * ne0, L, c0, n, cs, sn);
            }
            r = r_end;
        }
    }
    /* elements past n_dims: copied */
    for (int64_t r = r0; r < r1 && n_dims < ne0; r++) {
        const int64_t i1 = r % ne1, i2 = (r / ne1) % ne2, i3 = r / (ne1 * ne2);
        const float * x =
            (const float *) ((const uint8_t *) a->data + i1 * a->nb[1] + i2 * a->nb[2] + i3 * a->nb[3]);
        float * z = (float *) ((uint8_t *) dst->data + i1 * dst->nb[1] + i2 * dst->nb[2] + i3 * dst->nb[3]);
        for (int64_t e = n_dims; e < ne0; e++) z[e] = x[e * (int64_t) sa];
    }
}

static void rope_generic(const gs_compute_params * p, gs_tensor * dst) {
    rope_body(p, dst);
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("fma")))
static void rope_fma(const gs_compute_params * p, gs_tensor * dst) {
    rope_body(p, dst);   /* fmaf becomes one instruction; results are identical */
}
#endif

void gs_cpu_op_rope(const gs_compute_params * p, gs_tensor * dst) {
#if defined(__x86_64__) || defined(__i386__)
    gs_cpu_info info;
    gs_cpu_get_info(&info);
    if (info.fma) {
        rope_fma(p, dst);
        return;
    }
#endif
    rope_generic(p, dst);
}
