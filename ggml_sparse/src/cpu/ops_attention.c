/*
 * ops_attention.c - fused causal attention over a KV cache, with
 * grouped-query heads (GQA).
 *
 * q    F32 {D, H, T}: query head h of token t; rows contiguous (nb[0] = 4),
 *      any nb[1], nb[2].
 * k, v F32 or F16 caches {D, Hkv, n_ctx}: slot j of kv head c is the row
 *      at j * nb[2] + c * nb[1]; rows contiguous, any nb[1], nb[2]. Both F16:
 *      ops_attention_f16.c (llama.cpp's arithmetic); both quantized (Q8_0 /
 *      Q4_0): ops_attention_quant.c; otherwise the kernels here.
 * pos  I32 {T}, contiguous: token t attends to slots 0..pos[t]; a position
 *      outside 0..n_ctx-1 fails the compute with GS_ERR_RUNTIME before
 *      anything is read.
 * op_params[0]: scale (float bits); [1]: n_swa (0: no window); [2]: softcap
 *      (float bits, 0: none); [3]: n_stream (0: one stream; else token t sees
 *      only the slots of its own stream of n_stream slots, see ggml_sparse.h).
 * dst  F32 {D, H, T}, contiguous:
 *      dst[t][h] = sum_j softmax_j(cap(scale * q[t][h] . k[j][c])) * v[j][c],
 *      j = lo..pos[t], c = h / (H / Hkv), lo = max(0, pos[t] + 1 - n_swa)
 *      with a window (else 0), cap(s) = softcap tanh(s / softcap) or s.
 *
 * Work split: the T*H (token, head) pairs are split across threads. A
 * thread handles its pairs in runs of up to GROUP heads of one token. A run
 * makes one pass over the K slots and one over the V slots; at each slot it
 * reads the rows of all kv heads the run needs (adjacent in memory), and
 * converts each row from F16 once for all query heads that share it. Per
 * head the arithmetic does not depend on how heads are grouped, so results
 * do not depend on the thread count.
 *
 * Scratch per thread (floats): GROUP rows of n_ctx scores (padded, see
 * score_stride), GROUP * D scaled queries, GROUP * D accumulators and
 * VBLOCK * D converted rows, with GROUP capped at H.
 *
 * Kernels: a generic C version written so that compilers vectorise it at
 * the baseline ISA, and AVX2 / AVX-512 versions (target attributes, chosen
 * at run time from the active SIMD level) whose dot products and weighted
 * sums keep their partial sums in registers.
 */
#include "../gs_internal.h"

#include "attention_f16.h"

#include <assert.h>
#include <math.h>

#define GROUP 32    /* query heads sharing one pass over the cache   */
#define LANES 16    /* independent partial sums in dot products      */
#define PREFETCH_AHEAD 8
#define VBLOCK 16   /* V rows weighted per pass over the accumulators */

#define ALWAYS_INLINE inline __attribute__((always_inline))

typedef struct {
    int64_t D;                   /* head dim                                   */
    int64_t n;                   /* slots attended: pos + 1                    */
    int g;                       /* heads in this run (1..GROUP)               */
    int h0;                      /* first query head of the run                */
    int per_kv;                  /* query heads per kv head                    */
    float scale;
    float softcap;               /* > 0: soft-capped scores                    */
    const float * q[GROUP];      /* query rows                                 */
    float * out[GROUP];          /* output rows                                */
    const uint8_t * k, * v;      /* slot 0, kv head 0 of the caches            */
    size_t k_slot, v_slot;       /* bytes from one slot to the next (nb[2])    */
    size_t k_head, v_head;       /* bytes from one kv head to the next (nb[1]) */
    bool k_f16, v_f16;
    float * scores;              /* GROUP rows of s_stride floats              */
    int64_t s_stride;
    float * qs, * acc, * rows;   /* GROUP*D, GROUP*D, VBLOCK*D floats          */
} attn_run;

/* IEEE half -> float without F16C: shift exponent and mantissa into place
 * and rescale by 2^112 (exact for normal and subnormal halves), then fix
 * up inf/NaN and the sign. Branch-free so loops over it vectorise. */
static ALWAYS_INLINE float half_to_float(uint16_t h) {
    const uint32_t em = (uint32_t) (h & 0x7FFF) << 13;
    float f;
    memcpy(&f, &em, sizeof(f));
    f *= 0x1p112f;
    uint32_t bits;
    memcpy(&bits, &f, sizeof(bits));
    const uint32_t special = 0u - (uint32_t) ((h & 0x7C00) == 0x7C00);   /* all ones for inf/NaN */
    bits = (bits & ~special) | ((em | 0x7F800000u) & special);
    bits |= (uint32_t) (h & 0x8000) << 16;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

/* Convert n halves to floats. */
typedef void (*half_row_fn)(const uint16_t * h, float * out, int64_t n);

static void half_row_generic(const uint16_t * h, float * out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = half_to_float(h[i]);
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

__attribute__((target("avx2,fma,f16c")))
static inline void half_row_f16c(const uint16_t * h, float * out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (h + i))));
    }
    for (; i < n; i++) out[i] = half_to_float(h[i]);
}
#endif

/* e^x for x <= 0 (a score minus the row maximum), branch-free so loops
 * over it vectorise: x = n ln2 + r with |r| <= ln2/2, e^r by its degree-7
 * Taylor polynomial, 2^n written into the exponent bits; relative error
 * under 2 ulp. Inputs below -87 are clamped (e^-87 ~ 1.6e-38, a negligible
 * weight next to the maximum's 1). */
static ALWAYS_INLINE float exp_nonpos(float x) {
    x = x < -87.0f ? -87.0f : x;   /* NaN stays NaN */
    const float shifter = 12582912.0f;   /* 1.5 * 2^23: adding it rounds to an integer */
    const float nf = (x * 1.44269504f + shifter) - shifter;
    const float r = (x - nf * 0.693145752f) - nf * 1.42860677e-6f;   /* ln2 = hi + lo */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const uint32_t bits = (uint32_t) ((int32_t) nf + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

/* Prefetch `bytes` at p. Slot rows are strided (a slot spans all kv
 * heads), and hardware prefetchers, which stop at page boundaries, miss
 * many of them; the passes ask PREFETCH_AHEAD slots ahead. */
static ALWAYS_INLINE void prefetch(const uint8_t * p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 1);
}

/* Slot row as floats: F32 rows are used in place, F16 rows converted. */
static ALWAYS_INLINE const float * slot_row(const uint8_t * p, bool f16, int64_t D, float * buf,
                                            half_row_fn half_row) {
    if (!f16) return (const float *) p;
    half_row((const uint16_t *) p, buf, D);
    return buf;
}

/* Sum of the LANES partial sums, pairwise. */
static ALWAYS_INLINE float lanes_sum(float * lane) {
    for (int w = LANES / 2; w > 0; w /= 2) {
        for (int l = 0; l < w; l++) lane[l] += lane[l + w];
    }
    return lane[0];
}

/* Dot product of n floats. */
typedef float (*dot_fn)(const float * x, const float * y, int64_t n);

static float dot_generic(const float * x, const float * y, int64_t n) {
    float lane[LANES] = { 0 };
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        for (int l = 0; l < LANES; l++) lane[l] += x[i + l] * y[i + l];
    }
    float tail = 0.0f;
    for (; i < n; i++) tail += x[i] * y[i];
    return lanes_sum(lane) + tail;
}

#if defined(__x86_64__) || defined(__i386__)
/* The horizontal sums stay in registers (a lane array would round-trip
 * through memory for every score). */
__attribute__((target("avx2,fma")))
static inline float dot_avx2(const float * x, const float * y, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
    }
    if (i + 8 <= n) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
        i += 8;
    }
    a0 = _mm256_add_ps(a0, a1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float s = _mm_cvtss_f32(h);
    for (; i < n; i++) s += x[i] * y[i];
    return s;
}

__attribute__((target("avx512f,avx2,fma")))
static inline float dot_avx512(const float * x, const float * y, int64_t n) {
    __m512 a = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a);
    float s = _mm512_reduce_add_ps(a);
    for (; i < n; i++) s += x[i] * y[i];
    return s;
}
#endif

/* acc[0..D) += sum over jj < nb of w[jj] * rows[jj][0..D), in order of jj
 * for every element. */
typedef void (*wsum_fn)(float * acc, const float * w, const float * const * rows, int nb, int64_t D);

static void wsum_generic(float * acc, const float * w, const float * const * rows, int nb, int64_t D) {
    for (int jj = 0; jj < nb; jj++) {
        const float * x = rows[jj];
        for (int64_t i = 0; i < D; i++) acc[i] += w[jj] * x[i];
    }
}

#if defined(__x86_64__) || defined(__i386__)
/* The accumulators of a 32- or 64-float slice stay in registers for all nb
 * rows instead of a load and a store per row. */
__attribute__((target("avx2,fma")))
static inline void wsum_avx2(float * acc, const float * w, const float * const * rows, int nb, int64_t D) {
    int64_t i = 0;
    for (; i + 32 <= D; i += 32) {
        __m256 a0 = _mm256_loadu_ps(acc + i), a1 = _mm256_loadu_ps(acc + i + 8);
        __m256 a2 = _mm256_loadu_ps(acc + i + 16), a3 = _mm256_loadu_ps(acc + i + 24);
        for (int jj = 0; jj < nb; jj++) {
            const __m256 wj = _mm256_set1_ps(w[jj]);
            const float * x = rows[jj] + i;
            a0 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(x), a0);
            a1 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(x + 8), a1);
            a2 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(x + 16), a2);
            a3 = _mm256_fmadd_ps(wj, _mm256_loadu_ps(x + 24), a3);
        }
        _mm256_storeu_ps(acc + i, a0);
        _mm256_storeu_ps(acc + i + 8, a1);
        _mm256_storeu_ps(acc + i + 16, a2);
        _mm256_storeu_ps(acc + i + 24, a3);
    }
    for (int jj = 0; jj < nb; jj++) {
        for (int64_t e = i; e < D; e++) acc[e] = fmaf(w[jj], rows[jj][e], acc[e]);
    }
}

__attribute__((target("avx512f,avx2,fma")))
static inline void wsum_avx512(float * acc, const float * w, const float * const * rows, int nb, int64_t D) {
    int64_t i = 0;
    for (; i + 64 <= D; i += 64) {
        __m512 a0 = _mm512_loadu_ps(acc + i), a1 = _mm512_loadu_ps(acc + i + 16);
        __m512 a2 = _mm512_loadu_ps(acc + i + 32), a3 = _mm512_loadu_ps(acc + i + 48);
        for (int jj = 0; jj < nb; jj++) {
            const __m512 wj = _mm512_set1_ps(w[jj]);
            const float * x = rows[jj] + i;
            a0 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(x), a0);
            a1 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(x + 16), a1);
            a2 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(x + 32), a2);
            a3 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(x + 48), a3);
        }
        _mm512_storeu_ps(acc + i, a0);
        _mm512_storeu_ps(acc + i + 16, a1);
        _mm512_storeu_ps(acc + i + 32, a2);
        _mm512_storeu_ps(acc + i + 48, a3);
    }
    for (; i + 16 <= D; i += 16) {
        __m512 a = _mm512_loadu_ps(acc + i);
        for (int jj = 0; jj < nb; jj++) {
            a = _mm512_fmadd_ps(_mm512_set1_ps(w[jj]), _mm512_loadu_ps(rows[jj] + i), a);
        }
        _mm512_storeu_ps(acc + i, a);
    }
    for (int jj = 0; jj < nb; jj++) {
        for (int64_t e = i; e < D; e++) acc[e] = fmaf(w[jj], rows[jj][e], acc[e]);
    }
}
#endif

/* x rounded to the nearest F16 value (round half to even), as a float. */
static ALWAYS_INLINE float round_to_half(float x) {
    return GS_H2F(gs_float_to_half(x));
}

/* s[j] = e^(s[j] - max s) for j < n; returns the sum of the new values. */
static ALWAYS_INLINE float exp_shifted(float * s, int64_t n) {
    float lane[LANES];
    for (int l = 0; l < LANES; l++) lane[l] = s[0];
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES) {
        for (int l = 0; l < LANES; l++) lane[l] = s[j + l] > lane[l] ? s[j + l] : lane[l];
    }
    float max = s[0];
    for (; j < n; j++) max = s[j] > max ? s[j] : max;
    for (int l = 0; l < LANES; l++) max = lane[l] > max ? lane[l] : max;

    for (j = 0; j < n; j++) s[j] = exp_nonpos(s[j] - max);

    for (int l = 0; l < LANES; l++) lane[l] = 0.0f;
    for (j = 0; j + LANES <= n; j += LANES) {
        for (int l = 0; l < LANES; l++) lane[l] += s[j + l];
    }
    float tail = 0.0f;
    for (; j < n; j++) tail += s[j];
    return lanes_sum(lane) + tail;
}

/* Query heads [*r0, *r1) of the run that read kv head c. */
static ALWAYS_INLINE void heads_of(const attn_run * R, int c, int * r0, int * r1) {
    const int a = c * R->per_kv - R->h0, b = a + R->per_kv;
    *r0 = a > 0 ? a : 0;
    *r1 = b < R->g ? b : R->g;
}

static ALWAYS_INLINE void attend_run_body(const attn_run * R, half_row_fn half_row, dot_fn dot,
                                           wsum_fn wsum) {
    const int64_t D = R->D, n = R->n, ss = R->s_stride;
    const int g = R->g;
    const int c0 = R->h0 / R->per_kv, c1 = (R->h0 + g - 1) / R->per_kv + 1;   /* kv heads used */
    const size_t k_bytes = (size_t) D * (R->k_f16 ? 2 : 4), v_bytes = (size_t) D * (R->v_f16 ? 2 : 4);
    /* With F16 caches the arithmetic follows llama.cpp's (non-flash) CPU
     * attention, so both engines agree token for token: the query is
     * rounded to F16 before the K dot products, scores are scaled after
     * them, and the softmax weights are rounded to F16 before the V sum. */
    for (int r = 0; r < g; r++) {
        for (int64_t i = 0; i < D; i++) {
            R->qs[r * D + i] = R->k_f16 ? round_to_half(R->q[r][i]) : R->q[r][i] * R->scale;
        }
    }
    /* scores: one pass over the K slots */
    for (int64_t j = 0; j < n; j++) {
        const uint8_t * slot = R->k + j * R->k_slot;
        if (j + PREFETCH_AHEAD < n) {
            for (int c = c0; c < c1; c++) prefetch(slot + PREFETCH_AHEAD * R->k_slot + c * R->k_head, k_bytes);
        }
        for (int c = c0; c < c1; c++) {
            const float * k = slot_row(slot + c * R->k_head, R->k_f16, D, R->rows, half_row);
            int r0, r1;
            heads_of(R, c, &r0, &r1);
            for (int r = r0; r < r1; r++) R->scores[r * ss + j] = dot(R->qs + r * D, k, D);
        }
    }
    if (R->k_f16) {
        for (int r = 0; r < g; r++) {
            for (int64_t j = 0; j < n; j++) R->scores[r * ss + j] *= R->scale;
        }
    }
    if (R->softcap > 0.0f) {
        for (int r = 0; r < g; r++) gs_attn_softcap(R->scores + r * ss, 0, n, R->softcap);
    }
    /* softmax per head (n >= 1 finite scores: no fully masked rows) */
    float inv_sum[GROUP];
    for (int r = 0; r < g; r++) {
        inv_sum[r] = 1.0f / exp_shifted(R->scores + r * ss, n);
        if (R->v_f16) {
            float * w = R->scores + r * ss;
            for (int64_t j = 0; j < n; j++) w[j] = round_to_half(w[j] * inv_sum[r]);
            inv_sum[r] = 1.0f;
        }
    }
    /* weighted sum: one pass over the V slots, VBLOCK slots at a time */
    memset(R->acc, 0, (size_t) (g * D) * sizeof(float));
    const float * rows[VBLOCK];
    for (int64_t j0 = 0; j0 < n; j0 += VBLOCK) {
        const int nb = n - j0 < VBLOCK ? (int) (n - j0) : VBLOCK;
        const uint8_t * block = R->v + j0 * R->v_slot;
        for (int64_t jj = VBLOCK; jj < VBLOCK + nb && j0 + jj < n; jj++) {
            for (int c = c0; c < c1; c++) prefetch(block + jj * R->v_slot + c * R->v_head, v_bytes);
        }
        for (int c = c0; c < c1; c++) {
            for (int jj = 0; jj < nb; jj++) {
                const uint8_t * row = block + jj * R->v_slot + c * R->v_head;
                rows[jj] = slot_row(row, R->v_f16, D, R->rows + jj * D, half_row);
            }
            int r0, r1;
            heads_of(R, c, &r0, &r1);
            for (int r = r0; r < r1; r++) wsum(R->acc + r * D, R->scores + r * ss + j0, rows, nb, D);
        }
    }
    for (int r = 0; r < g; r++) {
        for (int64_t i = 0; i < D; i++) R->out[r][i] = R->acc[r * D + i] * inv_sum[r];
    }
}

static void attend_run_generic(const attn_run * R) {
    attend_run_body(R, half_row_generic, dot_generic, wsum_generic);
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2,fma,f16c")))
static void attend_run_avx2(const attn_run * R) {
    attend_run_body(R, half_row_f16c, dot_avx2, wsum_avx2);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
static void attend_run_avx512(const attn_run * R) {
    attend_run_body(R, half_row_f16c, dot_avx512, wsum_avx512);
}
#endif

typedef void (*attend_run_fn)(const attn_run * R);

/* The kernel for the active SIMD level (see gs_cpu_set_level). */
static attend_run_fn pick_kernel(void) {
    gs_cpu_info info;
    gs_cpu_get_info(&info);
#if defined(__x86_64__) || defined(__i386__)
    if (info.level >= GS_IMPL_AVX512) return attend_run_avx512;
    if (info.level >= GS_IMPL_AVX2) return attend_run_avx2;
#endif
    return attend_run_generic;
}

static int64_t group_size(const gs_tensor * dst) {
    const int64_t H = dst->src[0]->ne[1];
    return H < GROUP ? H : GROUP;
}

/* Floats between the score rows of two heads: n_ctx rounded up to a cache
 * line, plus one line so that the rows, written together slot by slot, do
 * not all fall into the same cache set. */
static int64_t score_stride(const gs_tensor * dst) {
    return (dst->src[1]->ne[2] + 15) / 16 * 16 + 16;
}

/* Floats of scratch one thread uses, rounded up to a cache line. */
static size_t thread_floats(const gs_tensor * dst) {
    const int64_t D = dst->src[0]->ne[0];
    const int64_t g = group_size(dst);
    size_t n = (size_t) (g * score_stride(dst) + 2 * g * D + VBLOCK * D);
    const size_t n_f16 = gs_cpu_attention_f16_scratch(dst) / sizeof(float);
    if (n_f16 > n) n = n_f16;
    if (gs_get_type_traits(dst->src[1]->type)->is_quantized) {
        n = (gs_cpu_attention_quant_scratch(dst) + sizeof(float) - 1) / sizeof(float);
    }
    return (n + 15) / 16 * 16;
}

size_t gs_cpu_attention_work_size(const gs_tensor * dst, int n_threads) {
    return (size_t) n_threads * thread_floats(dst) * sizeof(float);
}

void gs_cpu_op_attention(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * q = dst->src[0];
    const gs_tensor * k = dst->src[1];
    const gs_tensor * v = dst->src[2];
    const gs_tensor * pos_t = dst->src[3];
    const int32_t * pos = (const int32_t *) pos_t->data;
    const int64_t D = q->ne[0], H = q->ne[1], T = q->ne[2];
    const int64_t n_ctx = k->ne[2], per_kv = H / k->ne[1];

    /* every thread checks all positions, so all agree without a barrier */
    for (int64_t t = 0; t < T; t++) {
        if (pos[t] < 0 || pos[t] >= n_ctx) {
            if (p->ith == 0) {
                gs_compute_fail(p, GS_ERR_RUNTIME,
                                "attention: position %d of query token %lld ('%s') is outside the "
                                "cache of %lld slots", (int) pos[t], (long long) t, pos_t->name,
                                (long long) n_ctx);
            }
            return;
        }
    }

    assert(p->wsize / (size_t) p->nth >= thread_floats(dst) * sizeof(float));
    float * scratch = gs_thread_scratch(p);   /* thread_floats(dst) floats */
    if (k->type == GS_TYPE_F16 && v->type == GS_TYPE_F16) {
        gs_cpu_attention_f16_compute(p, dst, scratch);
        return;
    }
    if (gs_get_type_traits(k->type)->is_quantized) {
        gs_cpu_attention_quant_compute(p, dst, scratch);
        return;
    }
    const int64_t gmax = group_size(dst), ss = score_stride(dst);
    attn_run R = {
        .D = D, .per_kv = (int) per_kv, .scale = 0.0f,
        .k = k->data, .v = v->data,
        .k_slot = k->nb[2], .v_slot = v->nb[2], .k_head = k->nb[1], .v_head = v->nb[1],
        .k_f16 = k->type == GS_TYPE_F16, .v_f16 = v->type == GS_TYPE_F16,
        .scores = scratch, .s_stride = ss,
        .qs = scratch + gmax * ss,
        .acc = scratch + gmax * ss + gmax * D,
        .rows = scratch + gmax * ss + 2 * gmax * D,
    };
    memcpy(&R.scale, &dst->op_params[0], sizeof(float));
    memcpy(&R.softcap, &dst->op_params[2], sizeof(float));
    const int64_t n_swa = dst->op_params[1], n_stream = dst->op_params[3];
    const attend_run_fn run = pick_kernel();

    int64_t u0, u1;
    gs_split_rows(T * H, p->ith, p->nth, &u0, &u1);
    for (int64_t u = u0; u < u1;) {
        /* run: heads h.. of token t, at most gmax, within this thread's share */
        const int64_t t = u / H, h = u % H;
        int64_t end = u + gmax;
        if (end > (t + 1) * H) end = (t + 1) * H;
        if (end > u1) end = u1;
        R.g = (int) (end - u);
        R.h0 = (int) h;
        /* the window (within the token's stream): slots lo..pos[t], seen as a cache
         * starting at slot lo */
        const int64_t n = (int64_t) pos[t] + 1, lo = gs_attn_first_slot(pos[t], n_stream, n_swa);
        R.n = n - lo;
        R.k = (const uint8_t *) k->data + lo * k->nb[2];
        R.v = (const uint8_t *) v->data + lo * v->nb[2];
        for (int r = 0; r < R.g; r++) {
            R.q[r] = (const float *) ((const uint8_t *) q->data + (h + r) * q->nb[1] + t * q->nb[2]);
            R.out[r] = (float *) ((uint8_t *) dst->data + (h + r) * dst->nb[1] + t * dst->nb[2]);
        }
        run(&R);
        u = end;
    }
}
