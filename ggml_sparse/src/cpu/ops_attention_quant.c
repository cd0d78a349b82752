/*
 * ops_attention_quant.c - attention over quantized (Q8_0 / Q4_0) KV caches.
 *
 * Same contract as gs_attention (ops_attention.c), used when the caches
 * are quantized (K and V each Q8_0 or Q4_0; head_dim a multiple of their
 * block size, 32, checked by gs_attention_ext). llama.cpp reads such caches
 * only through its flash-attention op; this kernel follows the order of
 * operations of its CPU version for one query row
 * (ggml_compute_forward_flash_attn_ext_f16_one_chunk with a quantized K):
 *
 *   q_q = q converted to K's dot-product type (Q8_0 for both cache types)
 *         by the activation quantizer the matrix products use;
 *   for each visible slot j in order (an online softmax):
 *     s  = dot(k_j, q_q) * scale'       (the K type's vec_dot kernel)
 *     s  = softcap * tanhf(s)           with a soft-cap, scale' = scale / softcap
 *     if s > M: M = s, ms = expf(M_old - M), acc *= ms, vs = 1
 *     else:     ms = 1, vs = expf(s - M)
 *     acc += vs * dequant(v_j)          (one fused multiply-add per element)
 *     S = S * ms + vs                   (fused as well)
 *   out = acc * (1 / S)
 *
 * Slots outside the window (and after pos[t]) are skipped, as llama.cpp
 * skips masked (-inf) slots. The results are not bit-identical to
 * llama.cpp's: its x86 kernels quantize the cached rows with the activation
 * rule (scale 127/amax, round half to even) where gs_set_rows uses the file
 * format's reference quantizer, and its dot-product kernels sum in another
 * order; the arithmetic above is the same.
 *
 * Work split: the (token, head) pairs are split across threads, as in
 * ops_attention.c. A thread takes its pairs in runs of the heads of one
 * token that share a kv head (at most GROUP): each V row of the run is
 * dequantized once for all of them. Per head the arithmetic does not depend
 * on the grouping, so results do not depend on the thread count.
 *
 * The scores of SLOTS slots come first, for all heads of the run, from
 * the K type's tile kernel where the SIMD level has one (each value equal
 * to its vec_dot's bit for bit), then the online softmax walks those slots.
 * V rows are dequantized inline (the reference dequantizers' products).
 *
 * Scratch per thread (floats): G * D accumulators, D for a dequantized V
 * row, 2 * G for the running maxima and sums, G * SLOTS scores, and the G
 * quantized queries (G * row bytes of D in the dot type), G = min(GROUP,
 * n_head / n_head_kv).
 */
#include "../gs_internal.h"

#include "attention_f16.h"

#include <math.h>

#define GROUP 32
#define SLOTS 32    /* slots scored per tile call */

#define ALWAYS_INLINE inline __attribute__((always_inline))

typedef struct {
    int64_t D;
    int g;                          /* heads in this run                      */
    float scale;                    /* scale, divided by softcap with a cap   */
    float softcap;
    gs_vec_dot_fn kq_dot;           /* K type . K's dot type                  */
    gs_vec_dot_tile_fn kq_tile;     /* the same, many rows per call (or NULL) */
    gs_type v_type;
    const uint8_t * k, * v;         /* the run's kv head at slot 0            */
    size_t k_slot, v_slot;
    const uint8_t * qq;             /* g quantized queries, q_bytes apart     */
    size_t q_bytes;
    float * acc, * vrow, * m, * s;  /* g * D, D, g, g                         */
    float * sc;                     /* g * SLOTS scores                       */
    float * out[GROUP];
} quant_run;

static int64_t run_heads(const gs_tensor * dst) {
    const int64_t per_kv = dst->src[0]->ne[1] / dst->src[1]->ne[1];
    return per_kv < GROUP ? per_kv : GROUP;
}

static size_t query_bytes(const gs_tensor * dst) {
    const gs_type dot_type = gs_get_type_traits(dst->src[1]->type)->vec_dot_type;
    return gs_type_row_size(dot_type, dst->src[0]->ne[0]);
}

size_t gs_cpu_attention_quant_scratch(const gs_tensor * dst) {
    const int64_t D = dst->src[0]->ne[0], g = run_heads(dst);
    const size_t floats = (size_t) (g * D + D + 2 * g + g * SLOTS + 16);
    return floats * sizeof(float) + (size_t) g * query_bytes(dst) + 64;
}

/* Row x of type t (n values, n % 32 == 0) as floats: the products of the
 * reference dequantizers (quants_ref.c), written so that they vectorise. */
static ALWAYS_INLINE void dequant_row(gs_type t, const uint8_t * x, float * y, int64_t n) {
    if (t == GS_TYPE_Q8_0) {
        const block_q8_0 * b = (const block_q8_0 *) x;
        for (int64_t i = 0; i < n / QK8_0; i++, y += QK8_0) {
            const float d = GS_H2F(b[i].d);
            for (int j = 0; j < QK8_0; j++) y[j] = b[i].qs[j] * d;
        }
    } else {
        const block_q4_0 * b = (const block_q4_0 *) x;
        for (int64_t i = 0; i < n / QK4_0; i++, y += QK4_0) {
            const float d = GS_H2F(b[i].d);
            for (int j = 0; j < QK4_0 / 2; j++) {
                y[j] = ((b[i].qs[j] & 0xF) - 8) * d;
                y[j + QK4_0 / 2] = ((b[i].qs[j] >> 4) - 8) * d;
            }
        }
    }
}

/* Slots lo..hi-1 of the run, in order. */
static ALWAYS_INLINE void quant_run_body(const quant_run * R, int64_t lo, int64_t hi) {
    const int64_t D = R->D;
    const int g = R->g;
    for (int r = 0; r < g; r++) {
        R->m[r] = -INFINITY;
        R->s[r] = 0.0f;
    }
    memset(R->acc, 0, (size_t) (g * D) * sizeof(float));
    for (int64_t j0 = lo; j0 < hi; j0 += SLOTS) {
        const int nb = hi - j0 < SLOTS ? (int) (hi - j0) : SLOTS;
        const uint8_t * k0 = R->k + j0 * R->k_slot;
        /* scores: sc[r * SLOTS + jj] = K row j0 + jj . query r */
        if (R->kq_tile) {
            R->kq_tile((int) D, R->sc, SLOTS, k0, R->k_slot, R->qq, R->q_bytes, nb, g);
        } else {
            for (int jj = 0; jj < nb; jj++) {
                for (int r = 0; r < g; r++) {
                    R->kq_dot((int) D, &R->sc[r * SLOTS + jj], k0 + jj * R->k_slot, R->qq + r * R->q_bytes);
                }
            }
        }
        for (int jj = 0; jj < nb; jj++) {
            dequant_row(R->v_type, R->v + (j0 + jj) * R->v_slot, R->vrow, D);
            for (int r = 0; r < g; r++) {
                float sc = R->sc[r * SLOTS + jj] * R->scale;
                if (R->softcap != 0.0f) sc = R->softcap * tanhf(sc);
                float * acc = R->acc + r * D;
                float ms = 1.0f, vs = 1.0f;
                if (sc > R->m[r]) {
                    ms = expf(R->m[r] - sc);
                    R->m[r] = sc;
                    for (int64_t i = 0; i < D; i++) acc[i] *= ms;
                } else {
                    vs = expf(sc - R->m[r]);
                }
                for (int64_t i = 0; i < D; i++) acc[i] = fmaf(R->vrow[i], vs, acc[i]);
                R->s[r] = fmaf(R->s[r], ms, vs);
            }
        }
    }
    for (int r = 0; r < g; r++) {
        const float inv = R->s[r] == 0.0f ? 0.0f : 1.0f / R->s[r];
        const float * acc = R->acc + r * D;
        for (int64_t i = 0; i < D; i++) R->out[r][i] = acc[i] * inv;
    }
}

typedef void (*quant_run_fn)(const quant_run * R, int64_t lo, int64_t hi);

static void quant_run_generic(const quant_run * R, int64_t lo, int64_t hi) {
    quant_run_body(R, lo, hi);
}

#if defined(__x86_64__) || defined(__i386__)
/* the same code with FMA instructions: the element loops vectorise (fmaf is
 * exact either way, so every level computes the same values) */
__attribute__((target("avx2,fma")))
static void quant_run_avx2(const quant_run * R, int64_t lo, int64_t hi) {
    quant_run_body(R, lo, hi);
}

__attribute__((target("avx512f,avx2,fma")))
static void quant_run_avx512(const quant_run * R, int64_t lo, int64_t hi) {
    quant_run_body(R, lo, hi);
}
#endif

static quant_run_fn pick_kernel(void) {
#if defined(__x86_64__) || defined(__i386__)
    gs_cpu_info info;
    gs_cpu_get_info(&info);
    if (info.level >= GS_IMPL_AVX512) return quant_run_avx512;
    if (info.level >= GS_IMPL_AVX2) return quant_run_avx2;
#endif
    return quant_run_generic;
}

void gs_cpu_attention_quant_compute(const gs_compute_params * p, gs_tensor * dst, void * scratch) {
    const gs_tensor * q = dst->src[0];
    const gs_tensor * k = dst->src[1];
    const gs_tensor * v = dst->src[2];
    const int32_t * pos = (const int32_t *) dst->src[3]->data;
    const int64_t D = q->ne[0], H = q->ne[1], T = q->ne[2];
    const int64_t per_kv = H / k->ne[1], gmax = run_heads(dst);
    const gs_cpu_type_funcs * kf = gs_cpu_funcs(k->type);
    float scale, softcap;
    memcpy(&scale, &dst->op_params[0], sizeof(float));
    memcpy(&softcap, &dst->op_params[2], sizeof(float));
    const int64_t n_swa = dst->op_params[1], n_stream = dst->op_params[3];

    float * f = scratch;
    quant_run R = {
        .D = D, .scale = softcap != 0.0f ? scale / softcap : scale, .softcap = softcap,
        .kq_dot = kf->vec_dot, .kq_tile = kf->vec_dot_tile, .v_type = v->type,
        .k_slot = k->nb[2], .v_slot = v->nb[2], .q_bytes = query_bytes(dst),
        .acc = f, .vrow = f + gmax * D, .m = f + gmax * D + D, .s = f + gmax * D + D + gmax,
        .sc = f + gmax * D + D + 2 * gmax,
    };
    uint8_t * qq = (uint8_t *) (f + gmax * D + D + 2 * gmax + gmax * SLOTS + 16);
    R.qq = qq;
    const quant_run_fn run = pick_kernel();

    int64_t u0, u1;
    gs_split_rows(T * H, p->ith, p->nth, &u0, &u1);
    for (int64_t u = u0; u < u1;) {
        /* run: heads h.. of token t that read kv head c, within this thread's share */
        const int64_t t = u / H, h = u % H, c = h / per_kv;
        int64_t end = t * H + (c + 1) * per_kv;
        if (end > u + gmax) end = u + gmax;
        if (end > u1) end = u1;
        R.g = (int) (end - u);
        for (int r = 0; r < R.g; r++) {
            const float * qr = (const float *) ((const uint8_t *) q->data + (h + r) * q->nb[1] + t * q->nb[2]);
            kf->from_float(qr, qq + r * R.q_bytes, D);
            R.out[r] = (float *) ((uint8_t *) dst->data + (h + r) * dst->nb[1] + t * dst->nb[2]);
        }
        R.k = (const uint8_t *) k->data + c * k->nb[1];
        R.v = (const uint8_t *) v->data + c * v->nb[1];
        run(&R, gs_attn_first_slot(pos[t], n_stream, n_swa), (int64_t) pos[t] + 1);
        u = end;
    }
}
