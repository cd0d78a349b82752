/*
 * ops_attention_f16.c - attention over F16 KV caches with llama.cpp's
 * arithmetic, so that both engines produce bit-identical results.
 *
 * Same contract as gs_attention (see ops_attention.c); used when both
 * caches are F16. llama.cpp's CPU path (without flash attention) computes
 *   kq  = k_f16 . f16(q)            one dot product per cache slot
 *   p   = softmax(kq * scale + mask) over n_kv slots (masked: -inf)
 *   out = v_f16 . f16(p)            one dot product per output element
 * where n_kv is the number of cache slots in use rounded up to KV_PAD. Its
 * F16 dot products keep 4 x 16 float lanes (element i of each 64-element
 * chunk goes to lane i % 64, one fused multiply-add per element), fold them
 * as ((a0 + a2) + (a1 + a3)), sum the 16 lanes as a tree (8 + 8, 4 + 4, then
 * (0 + 2) + (1 + 3)), and add the elements past the last full chunk in
 * double. For several query tokens (a prompt batch) its matrix products
 * take another path: one set of 16 lanes (element i to lane i % 16, one
 * fused multiply-add each, in order), summed with the same 16-lane tree.
 * Its softmax sums exp values 16 at a time with the same tree, in double,
 * with its own exp (gs_expf_compat). A sliding window masks slots (-inf,
 * weight 0) that keep their places in those sums: the kernels skip their
 * products but not their positions. This file follows those rules exactly.
 *
 * The kernel here (attend_one) is the reference; vec_avx2_attn.c and
 * vec_avx512_attn.c compute the same values with SIMD registers and are
 * used at those SIMD levels (gs_cpu_set_level).
 *
 * Work split: (token, head) pairs across threads. Scratch per thread:
 * n_ctx scores, 64 x D lane accumulators, D for the query.
 */
#include "../gs_internal.h"

#include <math.h>

#include "attention_f16.h"
#include "vec_math.h"

#define KV_PAD GS_ATTN_KV_PAD
#define CHUNK GS_ATTN_CHUNK

#define ALWAYS_INLINE inline __attribute__((always_inline))

static ALWAYS_INLINE float round_to_half(float x) {
    return GS_H2F(gs_float_to_half(x));
}

/* Sum of 16 lanes as a tree: (8 + 8), (4 + 4), then (0 + 2) + (1 + 3). */
static ALWAYS_INLINE float tree16(const float * s) {
    float t[8], u[4];
    for (int i = 0; i < 8; i++) t[i] = s[8 + i] + s[i];
    for (int i = 0; i < 4; i++) u[i] = t[4 + i] + t[i];
    return (u[0] + u[2]) + (u[1] + u[3]);
}

/* Fold 64 lane sums (lane a at stride `stride`) into one float. */
static ALWAYS_INLINE float fold64(const float * acc, size_t stride) {
    float s[16];
    for (int l = 0; l < 16; l++) {
        s[l] = (acc[l * stride] + acc[(32 + l) * stride]) + (acc[(16 + l) * stride] + acc[(48 + l) * stride]);
    }
    return tree16(s);
}

/* llama.cpp's F16 dot product of two rows already widened to float. */
static ALWAYS_INLINE float dot_f16_order(const float * x, const float * y, int64_t n) {
    const int64_t np = n & ~(int64_t) (CHUNK - 1);
    float acc[CHUNK] = { 0 };
    for (int64_t i = 0; i < np; i += CHUNK) {
        for (int a = 0; a < CHUNK; a++) acc[a] = fmaf(x[i + a], y[i + a], acc[a]);
    }
    double sum = np ? fold64(acc, 1) : 0.0;
    for (int64_t i = np; i < n; i++) sum += (double) (x[i] * y[i]);
    return (float) sum;
}

/* The batched (several query tokens) product order: 16 lanes, in order. */
static ALWAYS_INLINE float dot_batch_order(const float * x, const float * y, int64_t n) {
    float acc[16] = { 0 };
    for (int64_t i = 0; i < n; i += 16) {
        for (int l = 0; l < 16; l++) acc[l] = fmaf(x[i + l], y[i + l], acc[l]);
    }
    return tree16(acc);
}

typedef gs_attn_f16_scratch f16_scratch;

static ALWAYS_INLINE void widen(const gs_half * h, float * out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = GS_H2F(h[i]);
}

static ALWAYS_INLINE void attend_one(const f16_scratch * S, const float * q, const uint8_t * k_rows,
                                     size_t k_slot, const uint8_t * v_rows, size_t v_slot,
                                     int64_t lo, int64_t n, float * out) {
    const int64_t D = S->D, n_kv = S->n_kv;
    float * sc = S->scores;
    for (int64_t i = 0; i < D; i++) S->q16[i] = round_to_half(q[i]);
    float max = -INFINITY;
    for (int64_t j = lo; j < n; j++) {
        widen((const gs_half *) (k_rows + j * k_slot), S->row, D);
        sc[j] = (S->batch ? dot_batch_order(S->row, S->q16, D) : dot_f16_order(S->row, S->q16, D)) * S->scale;
        max = sc[j] > max ? sc[j] : max;
    }
    if (S->softcap > 0.0f) max = gs_attn_softcap(sc, lo, n, S->softcap);
    /* softmax over n_kv slots; slots < lo and >= n are masked and contribute 0 */
    for (int64_t j = 0; j < lo; j++) sc[j] = 0.0f;
    for (int64_t j = lo; j < n; j++) sc[j] = gs_expf_compat(sc[j] - max);
    for (int64_t j = n; j < n_kv; j++) sc[j] = 0.0f;
    double sum = 0.0;
    int64_t j = 0;
    for (; j + 16 <= n_kv; j += 16) sum += (double) tree16(sc + j);
    for (; j < n_kv; j++) sum += (double) sc[j];
    const float inv = (float) (1.0 / sum);
    for (j = lo; j < n; j++) sc[j] = round_to_half(sc[j] * inv);

    if (S->batch) {
        /* out[d] = dot over slots of v[.][d] and p, 16 lanes: slot j adds
         * its row into lane accumulator j % 16 (masked slots add zeros) */
        memset(S->acc, 0, (size_t) (16 * D) * sizeof(float));
        for (j = lo; j < n; j++) {
            float * acc = S->acc + (j % 16) * D;
            widen((const gs_half *) (v_rows + j * v_slot), S->row, D);
            for (int64_t d = 0; d < D; d++) acc[d] = fmaf(S->row[d], sc[j], acc[d]);
        }
        float lanes[16];
        for (int64_t d = 0; d < D; d++) {
            for (int l = 0; l < 16; l++) lanes[l] = S->acc[l * D + d];
            out[d] = tree16(lanes);
        }
        return;
    }
    /* out[d] = dot over slots of v[.][d] and p: lanes over slots, so each
     * slot adds its whole row into lane accumulator (j % 64) */
    const int64_t np = n_kv & ~(int64_t) (CHUNK - 1);
    const int64_t n_lanes = n < np ? n : np;
    memset(S->acc, 0, (size_t) (CHUNK * D) * sizeof(float));
    for (j = lo; j < n_lanes; j++) {
        float * acc = S->acc + (j % CHUNK) * D;
        widen((const gs_half *) (v_rows + j * v_slot), S->row, D);
        for (int64_t d = 0; d < D; d++) acc[d] = fmaf(S->row[d], sc[j], acc[d]);
    }
    for (int64_t d = 0; d < D; d++) out[d] = np ? fold64(S->acc + d, (size_t) D) : 0.0f;
    if (n > np) gs_attn_v_tail(v_rows, v_slot, sc, D, np, lo, n, out);
}

size_t gs_cpu_attention_f16_scratch(const gs_tensor * dst) {
    const int64_t D = dst->src[0]->ne[0], n_ctx = dst->src[1]->ne[2];
    return (size_t) (n_ctx + (CHUNK + 2) * D + 16) * sizeof(float);
}

static void attend_generic(const f16_scratch * S, const float * q, const uint8_t * k_rows, size_t k_slot,
                           const uint8_t * v_rows, size_t v_slot, int64_t lo, int64_t n, float * out) {
    attend_one(S, q, k_rows, k_slot, v_rows, v_slot, lo, n, out);
}

#if defined(__x86_64__) || defined(__i386__)
/* the same code with FMA instructions (fmaf is exact either way) */
__attribute__((target("avx2,fma,f16c")))
static void attend_fma(const f16_scratch * S, const float * q, const uint8_t * k_rows, size_t k_slot,
                       const uint8_t * v_rows, size_t v_slot, int64_t lo, int64_t n, float * out) {
    attend_one(S, q, k_rows, k_slot, v_rows, v_slot, lo, n, out);
}
#endif

/* The kernel for the active SIMD level and head size D (AVX2 implements the
 * single-token order only). */
static gs_attend_f16_fn pick_kernel(int64_t D, bool batch) {
#if defined(__x86_64__) || defined(__i386__)
    gs_cpu_info info;
    gs_cpu_get_info(&info);
    if (batch && info.level == GS_IMPL_AVX512) return gs_avx512_attend_f16_batch;
    if (!batch && info.level == GS_IMPL_AVX512 && D % 16 == 0) return gs_avx512_attend_f16;
    if (!batch && info.level >= GS_IMPL_AVX2 && D % 8 == 0) return gs_avx2_attend_f16;
    if (info.fma && info.avx2 && info.f16c) return attend_fma;
#endif
    return attend_generic;
}

/* The padded slot count and the order of stream `base`'s queries: its tokens of
 * the batch alone decide them (the used slots of the stream, rounded up to
 * KV_PAD; the batched order when the stream has several query tokens). */
static void stream_shape(const int32_t * pos, int64_t T, int64_t base, int64_t n_stream, int64_t n_ctx,
                         int64_t D, int64_t * n_kv, bool * batch) {
    int64_t n_used = 0, n_tok = 0;
    for (int64_t t = 0; t < T; t++) {
        if (pos == NULL) break;
        if (gs_attn_stream_base(pos[t], n_stream) != base) continue;
        n_tok++;
        n_used = pos[t] + 1 - base > n_used ? pos[t] + 1 - base : n_used;
    }
    const int64_t len = n_stream ? n_stream : n_ctx;
    *n_kv = (n_used + KV_PAD - 1) / KV_PAD * KV_PAD;
    if (*n_kv > len) *n_kv = len;
    *batch = n_tok > 1 && D % 16 == 0 && *n_kv % 16 == 0;
}

void gs_cpu_attention_f16_compute(const gs_compute_params * p, gs_tensor * dst, float * scratch) {
    const gs_tensor * q = dst->src[0];
    const gs_tensor * k = dst->src[1];
    const gs_tensor * v = dst->src[2];
    const int32_t * pos = (const int32_t *) dst->src[3]->data;
    const int64_t D = q->ne[0], H = q->ne[1], T = q->ne[2];
    const int64_t n_ctx = k->ne[2], per_kv = H / k->ne[1];
    f16_scratch S = {
        .D = D, .scores = scratch, .acc = scratch + n_ctx,
        .row = scratch + n_ctx + CHUNK * D, .q16 = scratch + n_ctx + (CHUNK + 1) * D,
    };
    memcpy(&S.scale, &dst->op_params[0], sizeof(float));
    memcpy(&S.softcap, &dst->op_params[2], sizeof(float));
    const int64_t n_swa = dst->op_params[1], n_stream = dst->op_params[3];
    const bool rowwise = dst->op_params[4] != 0;
    const gs_attend_f16_fn single = pick_kernel(D, false), batched = pick_kernel(D, true);
    int64_t u0, u1, base = -1;
    gs_split_rows(T * H, p->ith, p->nth, &u0, &u1);
    for (int64_t u = u0; u < u1; u++) {
        const int64_t t = u / H, h = u % H, c = h / per_kv;
        const int64_t tb = gs_attn_stream_base(pos[t], n_stream);
        if (rowwise) {          /* as if alone: its own slot count, the decoding order */
            base = tb;
            stream_shape(NULL, 0, base, n_stream, n_ctx, D, &S.n_kv, &S.batch);
            const int64_t n_own = pos[t] + 1 - base, len = n_stream ? n_stream : n_ctx;
            S.n_kv = (n_own + KV_PAD - 1) / KV_PAD * KV_PAD;
            if (S.n_kv > len) S.n_kv = len;
        } else if (tb != base) {
            base = tb;
            stream_shape(pos, T, base, n_stream, n_ctx, D, &S.n_kv, &S.batch);
        }
        const float * qr = (const float *) ((const uint8_t *) q->data + h * q->nb[1] + t * q->nb[2]);
        float * out = (float *) ((uint8_t *) dst->data + h * dst->nb[1] + t * dst->nb[2]);
        /* the stream seen as a cache of its own: slots relative to its first */
        const int64_t n = (int64_t) pos[t] + 1 - base, lo = gs_attn_first_slot(pos[t], n_stream, n_swa) - base;
        (S.batch ? batched : single)(&S, qr, (const uint8_t *) k->data + c * k->nb[1] + base * k->nb[2], k->nb[2],
                                     (const uint8_t *) v->data + c * v->nb[1] + base * v->nb[2], v->nb[2], lo, n,
                                     out);
    }
}
