/*
 * attention_f16.h - the per-head kernel interface of the F16-cache attention
 * (ops_attention_f16.c: scalar reference and dispatch; vec_avx2_attn.c,
 * vec_avx512_attn.c: SIMD versions, bit-identical to the reference), and the
 * entry points of the quantized-cache attention (ops_attention_quant.c).
 */
#ifndef GS_ATTENTION_F16_H
#define GS_ATTENTION_F16_H

#include "../gs_internal.h"

#include <math.h>

#define GS_ATTN_KV_PAD 256   /* llama.cpp pads the attended slot count to this */
#define GS_ATTN_CHUNK 64     /* elements per step of an F16 dot product        */

/* Streams (gs_attention_params.n_stream, op_params[3]; 0: one stream of the
 * whole cache): the first slot of the stream holding slot s. */
static inline int64_t gs_attn_stream_base(int64_t s, int64_t n_stream) {
    return n_stream ? s / n_stream * n_stream : 0;
}

/* The first slot a query at slot s sees: its stream's first slot, or the
 * window's (n_swa > 0: the last n_swa positions of its stream up to s). */
static inline int64_t gs_attn_first_slot(int64_t s, int64_t n_stream, int64_t n_swa) {
    const int64_t base = gs_attn_stream_base(s, n_stream), n = s + 1;
    return n_swa && n - base > n_swa ? n - n_swa : base;
}

/* One thread's view of an attention call plus its scratch. */
typedef struct {
    int64_t D;           /* head size                                          */
    float softcap;       /* > 0: scores become softcap * tanhf(s / softcap)    */
    int64_t n_kv;        /* slots the softmax spans: the used slot count
                            rounded up to GS_ATTN_KV_PAD, at most n_ctx        */
    float scale;
    bool batch;          /* several query tokens: llama.cpp's batched product
                            order (see ops_attention_f16.c); needs D and n_kv
                            multiples of 16                                    */
    float * scores;      /* n_ctx floats                                       */
    float * acc;         /* GS_ATTN_CHUNK * D lane accumulators                */
    float * row;         /* D: a widened cache row                             */
    float * q16;         /* D: the query rounded to F16                        */
} gs_attn_f16_scratch;

/* Attention of one query row q (D floats) over slots lo..n-1 of one kv head
 * (slots before lo are masked: the sliding window): slot j's K row (D
 * halves) is at k_rows + j * k_slot, its V row at v_rows + j * v_slot.
 * Masked slots keep their places in the lane and tree sums with weight 0,
 * as llama.cpp's masked slots. Writes D floats to out. */
typedef void (*gs_attend_f16_fn)(const gs_attn_f16_scratch * S, const float * q,
                                 const uint8_t * k_rows, size_t k_slot,
                                 const uint8_t * v_rows, size_t v_slot, int64_t lo, int64_t n,
                                 float * out);

/* out[d] += the slots np..n-1 (past the last full 64-slot chunk of n_kv) of
 * v_j[d] * p[j], summed in double after out[d] (0 when np == 0), as
 * llama.cpp adds the tail of its F16 dot products; slots before lo have
 * weight 0 and are skipped (adding 0 changes no sum). */
static inline void gs_attn_v_tail(const uint8_t * v_rows, size_t v_slot, const float * p, int64_t D,
                                  int64_t np, int64_t lo, int64_t n, float * out) {
    const int64_t j0 = lo > np ? lo : np;
    for (int64_t d = 0; d < D; d++) {
        double s = np ? (double) out[d] : 0.0;
        for (int64_t j = j0; j < n; j++) s += (double) (GS_H2F(((const gs_half *) (v_rows + j * v_slot))[d]) * p[j]);
        out[d] = (float) s;
    }
}

/* Soft-cap scores lo..n-1 (llama.cpp: scale by 1/cap, tanhf, scale by cap);
 * returns their new maximum. */
static inline float gs_attn_softcap(float * sc, int64_t lo, int64_t n, float cap) {
    const float inv = 1.0f / cap;
    float max = -INFINITY;
    for (int64_t j = lo; j < n; j++) {
        sc[j] = tanhf(sc[j] * inv) * cap;
        max = sc[j] > max ? sc[j] : max;
    }
    return max;
}

/* SIMD versions (NULL-free: callers check the CPU level first). They need
 * D to be a multiple of 16 (AVX-512) or 8 (AVX2); the dispatcher uses the
 * scalar kernel otherwise. */
void gs_avx512_attend_f16(const gs_attn_f16_scratch * S, const float * q, const uint8_t * k_rows,
                          size_t k_slot, const uint8_t * v_rows, size_t v_slot, int64_t lo, int64_t n,
                          float * out);
/* The batched (prompt) order, AVX-512 only. */
void gs_avx512_attend_f16_batch(const gs_attn_f16_scratch * S, const float * q, const uint8_t * k_rows,
                                size_t k_slot, const uint8_t * v_rows, size_t v_slot, int64_t lo, int64_t n,
                                float * out);
void gs_avx2_attend_f16(const gs_attn_f16_scratch * S, const float * q, const uint8_t * k_rows,
                        size_t k_slot, const uint8_t * v_rows, size_t v_slot, int64_t lo, int64_t n,
                        float * out);

/* Quantized caches (ops_attention_quant.c): K and V Q8_0 or Q4_0, in the
 * order of llama.cpp's CPU flash attention. Scratch bytes per thread, and
 * the compute of thread p->ith (positions already checked). */
size_t gs_cpu_attention_quant_scratch(const gs_tensor * dst);
void gs_cpu_attention_quant_compute(const gs_compute_params * p, gs_tensor * dst, void * scratch);

#endif /* GS_ATTENTION_F16_H */
