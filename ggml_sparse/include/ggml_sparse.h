/*
 * ggml_sparse.h - the public C API of the ggml_sparse tensor library (its
 * backends and graph scheduler: gs_backend.h; the CUDA backend: gs_cuda.h).
 *
 * ggml_sparse is a small ggml-style tensor library: typed n-d tensors (up to
 * 4 dims, ggml's `ne`/`nb` convention: ne[0] is the innermost, contiguous
 * dimension), GGUF-compatible quantized block types, a compute graph that is
 * built once and run many times on a persistent thread pool, and (later)
 * neuron-sparse FFN operators.
 *
 * Conventions
 *   - Every public function returns gs_status. GS_OK (0) is success; on any
 *     other value gs_last_error() returns a thread-local message saying why.
 *     Results come back through out-pointers. Nothing aborts on user input.
 *   - Handles are opaque. Objects come in _new/_free pairs; _free(NULL) is a
 *     no-op.
 *   - A tensor lives in a context. A context owns an arena for tensor structs
 *     and, unless no_alloc is set, for the data of tensors made with
 *     gs_new_tensor. gs_tensor_set_data() makes a tensor wrap memory owned
 *     elsewhere (a GGUF memory map) without copying.
 *   - Op constructors (gs_add, gs_mul_mat, ...) only record a node: they check
 *     shapes and types, create the result tensor (without data) and return.
 *     gs_graph_build collects the nodes a tensor depends on; gs_graph_plan
 *     assigns memory to all intermediate results (reusing buffers whose last
 *     reader has run) and sizes the scratch buffer; gs_graph_compute runs it.
 *     Inputs that change per run (token ids, positions) are ordinary tensors
 *     whose data the caller rewrites between runs.
 *
 * Worked example (y = silu(W x) with W quantized, 2 threads):
 *
 *     gs_context_params cp = gs_context_default_params();
 *     gs_context *ctx; gs_context_new(&cp, &ctx);
 *     int64_t wne[2] = {4096, 11008}, xne[2] = {4096, 1};
 *     gs_tensor *W, *x, *wx, *y;
 *     gs_new_tensor(ctx, GS_TYPE_Q4_0, 2, wne, &W);   // fill via gs_tensor_data
 *     gs_new_tensor(ctx, GS_TYPE_F32, 2, xne, &x);
 *     gs_mul_mat(ctx, W, x, &wx);                     // wx: {11008, 1} F32
 *     gs_unary(ctx, wx, GS_UNARY_SILU, &y);
 *     gs_graph *g; gs_graph_new(ctx, 64, &g);
 *     gs_graph_build(g, y); gs_graph_plan(g, 2);
 *     gs_threadpool *tp; gs_threadpool_new(2, &tp);
 *     gs_graph_compute(g, tp);                        // repeat as needed
 *     gs_threadpool_free(tp); gs_context_free(ctx);   // graph freed with ctx
 *
 * The block between "cffi-begin" and "cffi-end" is read verbatim by the
 * Python binding's build (cffi): it contains only plain C declarations.
 */
#ifndef GGML_SPARSE_H
#define GGML_SPARSE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cffi-begin */

/* ---------------------------------------------------------------------------
 * Status codes and errors
 * ------------------------------------------------------------------------- */
typedef enum {
    GS_OK = 0,
    GS_ERR_INVALID_ARG = 1,  /* bad argument: NULL, out of range, bad name  */
    GS_ERR_SHAPE = 2,        /* shapes do not fit the op's contract         */
    GS_ERR_TYPE = 3,         /* unsupported type or type combination        */
    GS_ERR_OOM = 4,          /* allocation failed or arena exhausted        */
    GS_ERR_STATE = 5,        /* call out of order (e.g. compute before plan)*/
    GS_ERR_RUNTIME = 6,      /* error detected while computing (bad index)  */
    GS_ERR_UNSUPPORTED = 7   /* feature not built in / not on this CPU      */
} gs_status;

/* Message describing the last non-OK status returned on this thread. */
const char * gs_last_error(void);

/* ---------------------------------------------------------------------------
 * Types. Values equal ggml's / GGUF's type ids, so a GGUF tensor's type can be
 * used directly. Block layouts are bit-compatible with GGUF files.
 * ------------------------------------------------------------------------- */
typedef enum {
    GS_TYPE_F32  = 0,
    GS_TYPE_F16  = 1,
    GS_TYPE_Q4_0 = 2,   /* 32 weights: f16 d, 16 B nibbles; w = d*(q-8)        */
    GS_TYPE_Q4_1 = 3,   /* 32 weights: f16 d, f16 m, nibbles; w = d*q + m      */
    GS_TYPE_Q5_0 = 6,   /* 32 weights: f16 d, 4 B high bits, nibbles; d*(q-16) */
    GS_TYPE_Q5_1 = 7,   /* 32 weights: f16 d, f16 m, high bits, nibbles        */
    GS_TYPE_Q8_0 = 8,   /* 32 weights: f16 d, int8 q[32]; w = d*q              */
    GS_TYPE_Q8_1 = 9,   /* activations: f32 d, f32 s = d*sum(q), int8 q[32]    */
    GS_TYPE_Q4_K = 12,  /* 256 weights: 8 sub-blocks of 32, 6-bit scale/min    */
    GS_TYPE_Q5_K = 13,  /* 256 weights: as Q4_K plus one high bit per weight   */
    GS_TYPE_Q6_K = 14,  /* 256 weights: 16 sub-blocks of 16, int8 scales       */
    GS_TYPE_Q8_K = 15,  /* activations: f32 d, int8 q[256], int16 bsums[16]    */
    GS_TYPE_I8   = 24,
    GS_TYPE_I16  = 25,
    GS_TYPE_I32  = 26,
    GS_TYPE_BF16 = 30,
    GS_TYPE_COUNT = 31
} gs_type;

/* Traits of a type (works for every id above; GS_ERR_TYPE otherwise). */
typedef struct {
    const char * name;        /* "q4_0", ...                                 */
    int64_t blck_size;        /* elements per block (1 for plain types)      */
    size_t  type_size;        /* bytes per block                             */
    bool    is_quantized;
    gs_type vec_dot_type;     /* activation type its dot product consumes    */
} gs_type_info;

gs_status gs_type_get_info(gs_type type, gs_type_info * out);
/* Bytes taken by one row of n elements (n must be a multiple of blck_size). */
gs_status gs_row_size(gs_type type, int64_t n, size_t * out);

/* ---------------------------------------------------------------------------
 * Conversions of contiguous rows (reference and SIMD paths, see gs_cpu_*).
 * n is the element count and must be a multiple of the type's block size.
 * ------------------------------------------------------------------------- */
/* Dequantize n elements of type `type` at src into floats. */
gs_status gs_dequantize(gs_type type, const void * src, float * dst, int64_t n);
/* Quantize n floats with the portable reference quantizer (any storable
 * type; for K types n is a multiple of 256). `imatrix` is reserved, pass NULL. */
gs_status gs_quantize(gs_type type, const float * src, void * dst, int64_t n,
                      const float * imatrix);
/* Quantize n floats into the type's activation format as the matmul does
 * (may use SIMD; results equal gs_quantize for the same type up to rounding
 * ties). */
gs_status gs_quantize_activations(gs_type type, const float * src, void * dst, int64_t n);
/* Dot product of one weight row x (type `type`, n elements) with one
 * activation row y already in the type's vec_dot_type.
 * impl: GS_IMPL_AUTO (best available), GS_IMPL_SCALAR (reference) or a
 * specific SIMD level (GS_ERR_UNSUPPORTED when the CPU lacks it). */
typedef enum {
    GS_IMPL_AUTO = 0,
    GS_IMPL_SCALAR = 1,
    GS_IMPL_AVX2 = 2,
    GS_IMPL_AVX512 = 3
} gs_impl;
gs_status gs_vec_dot(gs_type type, int64_t n, const void * x, const void * y,
                     gs_impl impl, float * out);

/* CPU features found at run time and the SIMD level the kernels use. */
typedef struct {
    bool avx2;
    bool fma;
    bool f16c;
    bool avx512f;
    bool avx512bw;
    bool avx512vl;
    bool avx512vnni;
    bool avx512bf16;
    gs_impl level;            /* what GS_IMPL_AUTO resolves to           */
} gs_cpu_info;
gs_status gs_cpu_get_info(gs_cpu_info * out);
/* Cap the SIMD level used by GS_IMPL_AUTO (for tests and benchmarks);
 * GS_IMPL_AUTO restores the best available. Process-wide, not thread-safe
 * with respect to running computations. */
gs_status gs_cpu_set_level(gs_impl level);

/* ---------------------------------------------------------------------------
 * Contexts and tensors
 * ------------------------------------------------------------------------- */
typedef struct gs_context gs_context;
typedef struct gs_tensor gs_tensor;
typedef struct gs_graph gs_graph;
typedef struct gs_threadpool gs_threadpool;

typedef struct {
    size_t mem_size;      /* arena bytes for tensor structs (+ data)         */
    bool   no_alloc;      /* true: gs_new_tensor allocates no data           */
} gs_context_params;

gs_context_params gs_context_default_params(void);  /* 16 MiB, alloc data */
gs_status gs_context_new(const gs_context_params * params, gs_context ** out);
void      gs_context_free(gs_context * ctx);
/* Bytes of the arena in use / in total. */
gs_status gs_context_mem(const gs_context * ctx, size_t * used, size_t * total);

/* New tensor with n_dims (1..4) dimensions ne[0..n_dims-1] (ne[0] innermost,
 * a multiple of the type's block size), contiguous. Data comes from the
 * arena (64-byte aligned, zeroed) unless the context is no_alloc. */
gs_status gs_new_tensor(gs_context * ctx, gs_type type, int n_dims,
                        const int64_t * ne, gs_tensor ** out);
/* Point a leaf tensor at memory owned elsewhere (no copy). The caller keeps
 * that memory alive and unchanged in size while the tensor is used. */
gs_status gs_tensor_set_data(gs_tensor * t, void * data);
gs_status gs_tensor_get_data(const gs_tensor * t, void ** out);
gs_status gs_tensor_set_name(gs_tensor * t, const char * name);
const char * gs_tensor_name(const gs_tensor * t);
gs_type   gs_tensor_type(const gs_tensor * t);
int       gs_tensor_n_dims(const gs_tensor * t);
/* Copies ne[4] and nb[4] (bytes) into the caller's arrays. */
gs_status gs_tensor_shape(const gs_tensor * t, int64_t * ne, size_t * nb);
/* Bytes spanned by the tensor's data (for contiguous tensors: rows*row size). */
size_t    gs_tensor_nbytes(const gs_tensor * t);
bool      gs_tensor_is_contiguous(const gs_tensor * t);
/* Mark a tensor as a graph output: its memory is never reused by the
 * planner, so it can be read after compute. */
gs_status gs_tensor_set_output(gs_tensor * t);

/* ---------------------------------------------------------------------------
 * Repacked weights. A Q4_0 weight matrix can be rewritten at load into
 * groups of 8 interleaved rows (src/cpu/repack.h has the byte layout) for
 * faster GEMV/GEMM kernels that accumulate as llama.cpp's repacked Q4_0 does
 * on x86: per output one fused multiply-add per 32-block in block order,
 * acc = fma((float) isum, d_w * d_x, acc) (isum: the exact integer dot of
 * the weights minus 8 with the Q8_0 activations). Row-major Q4_0 products
 * follow llama.cpp's non-repacked order instead.
 * A repacked Q4_K matrix keeps its bytes; its products follow llama.cpp's
 * repacked Q4_K order on x86: per output two accumulators, acc =
 * fma((float) s1, d_w * d_x, acc) and accm = fma((float) s2, dmin_w * d_x,
 * accm) (s1, s2: the exact integer sums of the scaled weight codes times
 * the Q8_K activations, and of the mins times the activation sums), result
 * acc - accm, one step per super-block for activation rows taken one at a
 * time and per 64 weights for those taken four at a time (of N rows, rows
 * n < N - N % 4 when N >= 4; src/cpu/repack.h).
 * ------------------------------------------------------------------------- */
/* Whether t qualifies: a contiguous 2-D Q4_0 or Q4_K leaf tensor {K, M}
 * with data, M % 8 == 0, not yet repacked. */
bool      gs_tensor_can_repack(const gs_tensor * t);
/* Write t's data repacked into dst (dst_size >= gs_tensor_nbytes(t) bytes,
 * not overlapping t's data; any alignment) and point t at dst, which the
 * caller keeps alive and unchanged while t is used; t's old data is no
 * longer read. Afterwards t may only be gs_mul_mat's first operand:
 * gs_graph_build refuses (GS_ERR_TYPE) a graph in which any other op or a
 * view reads it, and gs_tensor_set_data must not be called on it.
 * GS_ERR_TYPE when t does not qualify (see gs_tensor_can_repack). */
gs_status gs_tensor_repack(gs_tensor * t, void * dst, size_t dst_size);
bool      gs_tensor_is_repacked(const gs_tensor * t);

/* ---------------------------------------------------------------------------
 * Ops. Each records a node; shapes use ggml's convention. For 2-D tensors,
 * {ne0, ne1} is ne1 rows of ne0 elements. "Broadcast" means dims of b of
 * size 1, or ne of a that are multiples of b's, repeat b.
 * ------------------------------------------------------------------------- */

/* Views (no data of their own). Strides nb are bytes. */
gs_status gs_view(gs_context * ctx, gs_tensor * a, int n_dims, const int64_t * ne,
                  const size_t * nb, size_t offset, gs_tensor ** out);
/* Contiguous a seen with a new shape of the same element count. */
gs_status gs_reshape(gs_context * ctx, gs_tensor * a, int n_dims, const int64_t * ne,
                     gs_tensor ** out);
/* Permute dims: axes[i] is the destination of source dim i (ggml_permute). */
gs_status gs_permute(gs_context * ctx, gs_tensor * a, int a0, int a1, int a2, int a3,
                     gs_tensor ** out);
/* Transpose dims 0 and 1 (a view). */
gs_status gs_transpose(gs_context * ctx, gs_tensor * a, gs_tensor ** out);

/* Copy a (any layout, F32/F16/BF16 or quantized source) into a new
 * contiguous tensor of type `type` (F32, F16, BF16 or a quantized type). */
gs_status gs_cast(gs_context * ctx, gs_tensor * a, gs_type type, gs_tensor ** out);
/* Copy a into dst (same element count, dst contiguous); result is a view of
 * dst that orders the copy before later readers of the result. */
gs_status gs_cpy(gs_context * ctx, gs_tensor * a, gs_tensor * dst, gs_tensor ** out);
/* Row scatter: dst rows idx[i] = src row i (converted to dst's type).
 * dst {n, R, P2, P3}, src F32 {n, k, P2, P3} (each plane scatters into the
 * matching plane of dst), idx contiguous I32 {k}, 0 <= idx[i] < R (checked
 * at run time before anything is written: GS_ERR_RUNTIME). Quantized dst
 * rows are encoded by the type's reference quantizer (the bytes of
 * gguf.quants.quantize). Duplicate indices write the same row from several
 * threads: results are undefined.
 * Used to append to a KV cache at positions given as an input. Result: a
 * view of all of dst, to order readers after the write. */
gs_status gs_set_rows(gs_context * ctx, gs_tensor * dst, gs_tensor * src,
                      gs_tensor * idx, gs_tensor ** out);
/* Row gather: out row i = a row idx[i], dequantized to F32.
 * a {n, R} of any type, idx I32 {k} -> out F32 {n, k}. (Embedding lookup.) */
gs_status gs_get_rows(gs_context * ctx, gs_tensor * a, gs_tensor * idx, gs_tensor ** out);

/* Element-wise, F32. b broadcasts over a. out has a's shape. */
gs_status gs_add(gs_context * ctx, gs_tensor * a, gs_tensor * b, gs_tensor ** out);
gs_status gs_mul(gs_context * ctx, gs_tensor * a, gs_tensor * b, gs_tensor ** out);
/* out = a * s */
gs_status gs_scale(gs_context * ctx, gs_tensor * a, float s, gs_tensor ** out);

typedef enum {
    GS_UNARY_RELU = 0,
    GS_UNARY_SILU = 1,
    GS_UNARY_GELU = 2,       /* tanh approximation, with ggml's CPU numerics (below) */
    GS_UNARY_SQR_RELU = 3,   /* relu(x)^2                         */
    GS_UNARY_TANH = 4,       /* tanhf(x)                          */
    GS_UNARY_SIGMOID = 5     /* 1 / (1 + expf(-x)) (MoE routers)  */
} gs_unary_op;
/* out = f(a), F32.
 * GELU is computed as ggml's CPU backend does for F32 (its GGML_GELU_FP16
 * table): x <= -10 gives 0, x >= 10 gives x, any other x is rounded to F16
 * (nearest even) and mapped to gelu(h) = 0.5 h (1 + tanhf(sqrt(2/pi) h
 * (1 + 0.044715 h^2))) rounded to F16, with (1 + 0.044715 h^2) as one
 * fused multiply-add of (0.044715 h) and h, as the table was measured in
 * llama.cpp's build. So GELU results are F16 values (relative error up to
 * 2^-11 against the exact function), bit-identical to llama.cpp's. */
gs_status gs_unary(gs_context * ctx, gs_tensor * a, gs_unary_op op, gs_tensor ** out);
/* Gated product: out = f(a) * b (a, b same shape, F32). SwiGLU is SILU;
 * ReLU-llama is RELU; GeGLU is GELU (gated by ggml's rule: a <= -10 gives
 * +0 whatever b is, a >= 10 gives a * b). With gate_b set, out = f(a) *
 * f(b) (bamboo). */
gs_status gs_glu(gs_context * ctx, gs_tensor * a, gs_tensor * b, gs_unary_op op,
                 bool gate_b, gs_tensor ** out);

/* RMS norm over ne0: out = a / sqrt(mean(a^2) + eps). F32. */
gs_status gs_rms_norm(gs_context * ctx, gs_tensor * a, float eps, gs_tensor ** out);
/* Layer norm over ne0 (no affine): (a - mean) / sqrt(var + eps). F32. */
gs_status gs_norm(gs_context * ctx, gs_tensor * a, float eps, gs_tensor ** out);

typedef enum {
    GS_ROPE_NORMAL = 0,      /* rotate pairs (x[2i], x[2i+1])  (llama)       */
    GS_ROPE_NEOX = 2         /* rotate pairs (x[i], x[i+n/2])  (qwen2, neox) */
} gs_rope_mode;
/* RoPE parameters; start from gs_rope_default_params(n_dims) (attn_factor
 * 1, ext_factor 0: plain RoPE) and set what a model needs. With pair i's
 * extrapolated angle t_e = pos * freq_base^(-2i/n_dims) / freq_factors[i]
 * and interpolated angle t_i = freq_scale * t_e, pair i turns by
 *   t = t_i                                      (ext_factor == 0)
 *   t = t_i * (1 - m_i) + t_e * m_i              (YaRN: ext_factor != 0)
 * with m_i = ext_factor * (1 - clamp((i - lo) / max(0.001, hi - lo), 0, 1)),
 *   lo = max(0, floor(d(beta_fast))), hi = min(n_dims - 1, ceil(d(beta_slow))),
 *   d(b) = n_dims * ln(n_ctx_orig / (2 pi b)) / (2 ln(freq_base))
 * (ext_factor 1: pairs below lo extrapolate, above hi interpolate), and
 * cos t, sin t are multiplied by
 *   mscale = attn_factor                         (ext_factor == 0)
 *   mscale = attn_factor * (1 + 0.1 ln(1 / freq_scale))   (YaRN)
 * in llama.cpp's float32 steps (ggml_rope_ext: the same cos and sin bits).
 * YaRN models pass attn_factor = gs_rope_yarn_attn_factor(...), LongRoPE
 * (Phi-3) the file's rope.scaling.attn_factor with ext_factor 0. */
typedef struct {
    int   n_dims;            /* leading elements of each head to rotate       */
    int   mode;              /* gs_rope_mode                                  */
    float freq_base;         /* theta base, e.g. 10000                        */
    float freq_scale;        /* linear scaling: pos * freq_scale              */
    float attn_factor;       /* cos and sin times it; finite, > 0 (default 1) */
    float ext_factor;        /* YaRN's blend weight; finite, >= 0; 0: no YaRN */
    float beta_fast;         /* YaRN: rotations where extrapolation ends (32) */
    float beta_slow;         /* YaRN: rotations where interpolation starts (1) */
    int   n_ctx_orig;        /* YaRN: training context, > 0 when ext_factor != 0 */
} gs_rope_params;
/* n_dims as given, GS_ROPE_NORMAL, freq_base 10000, freq_scale 1,
 * attn_factor 1, ext_factor 0, beta_fast 32, beta_slow 1, n_ctx_orig 0. */
gs_rope_params gs_rope_default_params(int n_dims);
/* The attn_factor llama.cpp gives the ropes of a YaRN model of freq_scale
 * 1/factor: get_mscale(factor) = factor <= 1 ? 1 : 0.1 ln(factor) + 1,
 * over the (1 + 0.1 ln(factor)) the rope multiplies in, times
 * file_attn_factor (rope.scaling.attn_factor, 1 when absent): the net
 * magnitude is transformers' YaRN attention factor (times the file's). */
float gs_rope_yarn_attn_factor(float freq_scale, float file_attn_factor);
/* a {head_dim, n_head, n_tokens} F32, pos I32 {n_tokens}. GS_ERR_INVALID_ARG
 * for n_dims odd or outside 2..head_dim, an unknown mode, and parameters
 * outside the ranges above (freq_base, freq_scale > 0). */
gs_status gs_rope(gs_context * ctx, gs_tensor * a, gs_tensor * pos,
                  const gs_rope_params * p, gs_tensor ** out);
/* gs_rope with per-pair frequency factors (Llama 3.1's `rope_freqs.weight`,
 * LongRoPE's rope_factors_long/short): freq_factors NULL or F32 contiguous
 * {n_dims/2}; pair i's extrapolated angle is theta_i / freq_factors[i]
 * instead of theta_i. */
gs_status gs_rope_ext(gs_context * ctx, gs_tensor * a, gs_tensor * pos, gs_tensor * freq_factors,
                      const gs_rope_params * p, gs_tensor ** out);

/* Softmax over ne0 of (a * scale + mask), F32. mask: NULL or F32 {ne0, ne1'}
 * broadcast over a's higher dims (ne1' >= a's ne1; -INFINITY hides a slot). */
gs_status gs_soft_max(gs_context * ctx, gs_tensor * a, gs_tensor * mask, float scale,
                      gs_tensor ** out);

/* Matrix product: a {K, M, ...} (weights, any type), b {K, N, ...} F32
 * (activations) -> out F32 {M, N, ...}: out[n][m] = dot(a row m, b row n).
 * a's dims 2,3 broadcast over b's. N = 1 is a GEMV, N > 1 a GEMM. */
gs_status gs_mul_mat(gs_context * ctx, gs_tensor * a, gs_tensor * b, gs_tensor ** out);
/* gs_mul_mat whose every output row is bit-identical to the product of that
 * one activation row alone (N = 1), whatever the other rows: batches use the
 * single-row dot order instead of llama.cpp's GEMM orders (tinyBLAS for
 * F32/F16/BF16, the K-quant tiles, repacked Q4_K's 4-row steps). For
 * batches of tokens of different sequences, whose results must not depend
 * on each other. Weight blocks are still read once for all rows. */
gs_status gs_mul_mat_rowwise(gs_context * ctx, gs_tensor * a, gs_tensor * b, gs_tensor ** out);

/* Causal attention over a KV cache with grouped-query heads.
 *   q     F32 {head_dim, n_head, n_tokens}
 *   k     F32/F16 cache {head_dim, n_head_kv, n_ctx} (any row stride), or
 *         Q8_0/Q4_0 (then v is Q8_0/Q4_0 too, and head_dim a multiple of 32)
 *   v     F32/F16 cache {head_dim, n_head_kv, n_ctx}, or Q8_0/Q4_0 with k
 *   pos   I32 {n_tokens}: query token t sees cache slots 0..pos[t]
 *         (pos[t] < n_ctx, checked at run time)
 * n_head must be a multiple of n_head_kv; head h reads kv head
 * h / (n_head / n_head_kv). out F32 {head_dim, n_head, n_tokens}. */
gs_status gs_attention(gs_context * ctx, gs_tensor * q, gs_tensor * k, gs_tensor * v,
                       gs_tensor * pos, float scale, gs_tensor ** out);
/* gs_attention with a sliding window and logit soft-capping:
 *   scale    scores are scale * (q . k)
 *   n_swa    0: no window; else query token t sees only the slots j with
 *            pos[t] - n_swa < j <= pos[t] (llama.cpp's LLAMA_SWA_TYPE_STANDARD
 *            with slot j holding position j: masked iff pos - j >= n_swa)
 *   softcap  0: none; else each score s becomes softcap * tanhf(s *
 *            (1 / softcap)) before the softmax (gemma2; llama.cpp's scale,
 *            tanh, scale, with 1 / softcap rounded to float first)
 * With F16 caches, the slots before the window take part in llama.cpp's
 * order of operations as masked slots (weight 0) do: the visible slots keep
 * their places in its lane and tree sums, so the result is bit-identical to
 * llama.cpp's masked attention over a cache whose slot j holds position j.
 * Other caches sum the visible slots only. Quantized caches follow llama.cpp's
 * CPU flash attention: each query row quantized to Q8_0, one K dot product
 * per visible slot, an online softmax (expf), V rows dequantized and summed
 * in F32; with a soft-cap the scale is divided by it first.
 *   n_stream 0: one sequence; else the cache holds n_ctx / n_stream sequence
 *            streams of n_stream slots (llama.cpp's non-unified cache): slot
 *            s = pos[t] of token t lies in stream s / n_stream, and the token
 *            sees only that stream's slots up to s (windowed as above, by
 *            position within the stream). Each stream is computed exactly as
 *            a cache of its own holding only its tokens of the batch: for a
 *            stream, its padded slot count and the prompt-or-decode order
 *            (F16) depend on its own tokens alone, never on the other
 *            streams' tokens in the batch, so a sequence's results are
 *            bit-identical whether it runs alone or batched with others.
 *   rowwise  0: as above; 1: every query token is computed exactly as it is
 *            when it is the only token of its stream in the batch (decoding
 *            order and padded slot count of its own position), so its result
 *            does not depend on the other tokens of the batch at all (a batch
 *            of tokens each decoded as if alone: gs_mul_mat_rowwise's
 *            companion; speculative verification).
 * gs_attention is n_swa = 0, softcap = 0, n_stream = 0, rowwise = 0. */
typedef struct {
    float scale;
    int32_t n_swa;
    float softcap;
    int32_t n_stream;
    int32_t rowwise;
} gs_attention_params;
gs_attention_params gs_attention_default_params(float scale);   /* no window, no cap */
gs_status gs_attention_ext(gs_context * ctx, gs_tensor * q, gs_tensor * k, gs_tensor * v,
                           gs_tensor * pos, const gs_attention_params * p, gs_tensor ** out);

/* ---------------------------------------------------------------------------
 * Neuron-sparse FFN (PowerInfer). An FFN of M = n_ff neurons: neuron m owns
 * row m of the gate and up weights ({n_embd, M}) and row m of the transposed
 * down projection ffn_down_t ({n_embd, M}). Per token a predictor decides
 * which neurons fire; only their rows are read.
 *
 * Active-neuron index `idx`: contiguous I32 {M + 1, n_tokens}. Column t (the
 * M + 1 values of token t) holds idx[0] = c, the number of active neurons
 * (0 <= c <= M), then idx[1..c] = their neuron ids, strictly ascending, each
 * in [0, M). Values after idx[c] are unspecified and never read. A neuron
 * not listed is inactive for that token: it contributes nothing (its entry
 * of a product is 0). Consumers check the index when they run (bad count,
 * id out of range or not ascending: GS_ERR_RUNTIME).
 *
 * Skip mask `skip` (optional, NULL for none): contiguous I32 {M}; skip[m] != 0
 * means neuron m is computed elsewhere (the GPU share of a hybrid split, the
 * layout of PowerInfer's gpu_idx): these ops treat it as inactive.
 *
 * Batches (n_tokens > 1) keep per-token sparsity: each token gets exactly
 * the neurons of its own column (processed token after token: rows shared
 * with earlier tokens come from cache).
 * ------------------------------------------------------------------------- */

/* Index from predictor scores: score F32 {M, n_tokens} (rows contiguous) ->
 * idx I32 {M + 1, n_tokens} as above: neuron m is active for token t iff
 * score[t][m] >= threshold (a NaN score is inactive; -INFINITY makes every
 * other neuron active). */
gs_status gs_sparse_index(gs_context * ctx, gs_tensor * score, float threshold, gs_tensor ** out);
/* Index from activation magnitudes (training-free, CATS-style sparsity of
 * models without a predictor): act F32 {M, n_tokens} (rows contiguous, e.g.
 * silu(gate . h)) -> idx I32 {M + 1, n_tokens} as above: neuron m is active
 * for token t iff |act[t][m]| >= threshold. threshold 0 keeps every neuron
 * (but NaN ones), +INFINITY drops every finite one; a NaN threshold is
 * GS_ERR_INVALID_ARG. Per-layer thresholds: one node per layer, each with
 * its own. The list is the same for any thread count and SIMD level. */
gs_status gs_sparse_index_abs(gs_context * ctx, gs_tensor * act, float threshold, gs_tensor ** out);
/* PowerInfer's predictor: idx = gs_sparse_index(fc2 . relu(fc1 . x), threshold).
 * fc1 {n_embd, H} and fc2 {H, M} of any weight type, x F32 {n_embd, n_tokens}:
 * the residual stream entering the FFN, before ffn_norm. Records the two
 * products, the relu and the index as four nodes. */
gs_status gs_sparse_predict(gs_context * ctx, gs_tensor * fc1, gs_tensor * fc2, gs_tensor * x,
                            float threshold, gs_tensor ** out);
/* An index restricted to a slice of the neurons, in the slice's own ids (the
 * hot neurons of a hybrid FFN, whose rows are stored compactly elsewhere).
 * idx {M + 1, n_tokens} as above; map contiguous I32 {M}: map[m] = the
 * compact id in [0, n_out) of neuron m, or -1 when m is not in the slice,
 * its non-negative entries strictly increasing with m (an ascending bucket
 * numbered in order) -> out I32 {n_out + 1, n_tokens}: per token the active
 * neurons the map keeps, as their compact ids (so again ascending): an
 * index for ops over the slice's n_out rows. n_out >= 0 (INVALID_ARG
 * otherwise). At run, a map entry below -1, at or above n_out or not
 * increasing, and a bad idx column, are GS_ERR_RUNTIME. */
gs_status gs_sparse_index_remap(gs_context * ctx, gs_tensor * idx, gs_tensor * map, int64_t n_out,
                                gs_tensor ** out);
/* Row-sparse product (gate, up): a {K, M} of any weight type, b F32
 * {K, n_tokens} (rows contiguous), idx {M + 1, n_tokens} or NULL (every
 * neuron active), skip {M} or NULL -> out F32 {M, n_tokens}:
 * out[t][m] = dot(a row m, b row t) for the neurons m active for token t and
 * not skipped, 0 for the others. Activations are quantized to a's
 * vec_dot_type as gs_mul_mat does, and each computed entry equals
 * gs_mul_mat's bit for bit: always for one token or with every neuron
 * active; in a sparse batch, up to rounding for the types whose multi-token
 * tiles round differently (float and K types with AVX-512). With AVX-512, a
 * batch of a quantized type whose tokens keep 25% or more of the neurons on
 * average is computed as the dense tiled product of every row, the other
 * entries then set to 0 (each row read once instead of once per token; the
 * same values). */
gs_status gs_mul_mat_sparse(gs_context * ctx, gs_tensor * a, gs_tensor * b, gs_tensor * idx,
                            gs_tensor * skip, gs_tensor ** out);
/* Down projection as an axpy over rows: a {E, M} (ffn_down_t, any weight
 * type: row m = neuron m's output weights), act F32 {M, n_tokens} (rows
 * contiguous), idx {M + 1, n_tokens} or NULL (every neuron), skip {M} or NULL
 * -> out F32 {E, n_tokens}: out[t] = sum of act[t][m] * (a row m) over the
 * neurons m active for token t and not skipped. Every output element is
 * summed in ascending m, so results do not depend on the thread count. */
gs_status gs_axpy_sparse(gs_context * ctx, gs_tensor * a, gs_tensor * act, gs_tensor * idx,
                         gs_tensor * skip, gs_tensor ** out);
/* Fused sparse ReLU FFN over neuron bundles. bundle {3 E, M} of one weight
 * type: row m is neuron m's record, [gate row m | up row m | ffn_down_t
 * row m], E = n_embd elements each (E a multiple of the type's block size).
 * h F32 {E, n_tokens} (ffn_norm output, rows contiguous), idx {M + 1,
 * n_tokens} or NULL (every neuron), skip {M} or NULL -> out F32 {E,
 * n_tokens}: out[t] = sum over the neurons m active for token t and not
 * skipped of act_m * (down row m), act_m = relu(g) * u (both_relu: relu(g) *
 * relu(u)), g and u the dots of the gate and up rows with h[t] quantized to
 * the type's vec_dot_type: exactly the values gs_mul_mat_sparse gives for
 * one token. A neuron whose act is 0 adds nothing (its up row is not read
 * when relu(g) is 0): the values of gs_axpy_sparse, which adds 0 * row. The
 * sum is taken in 8 chunks of consecutive active neurons
 * (ascending m within each, then chunk after chunk), a split that does not
 * depend on the thread count: results are the same for any thread count and
 * differ from gs_axpy_sparse's single ascending sum by rounding only. */
gs_status gs_sparse_ffn_bundle(gs_context * ctx, gs_tensor * bundle, gs_tensor * h, gs_tensor * idx,
                               gs_tensor * skip, bool both_relu, gs_tensor ** out);
/* Up and down projections of a gated FFN for the active neurons only, the
 * gate's activation given (CATS-style sparsity: the gate decides). up {E, M}
 * (any weight type with a dot product), down_t {E, M} (ffn_down transposed:
 * row m = neuron m's output weights; any float or weight type, may differ
 * from up's), each row contiguous, rows nb[1] >= one row's bytes apart; act F32 {M,
 * n_tokens} (e.g. silu(gate . h)), h F32 {E, n_tokens} (ffn_norm output),
 * both with contiguous rows; idx {M + 1, n_tokens} or NULL (every neuron),
 * skip {M} or NULL -> out F32 {E, n_tokens}:
 *     out[t] = sum over the neurons m active for token t and not skipped of
 *              (act[t][m] * u) * (down_t row m),   u = dot(up row m, h[t])
 * with h[t] quantized to up's vec_dot_type as gs_mul_mat does (u equals
 * gs_mul_mat_sparse's value for one token). One node in place of
 * gs_mul_mat_sparse, gs_mul and gs_axpy_sparse. Summed as gs_sparse_ffn_bundle
 * (8 chunks of consecutive active neurons, chunk after chunk): the same
 * result for any thread count, equal to the three-op composition up to
 * rounding. */
gs_status gs_sparse_ffn_up_down(gs_context * ctx, gs_tensor * up, gs_tensor * down_t, gs_tensor * act,
                                gs_tensor * h, gs_tensor * idx, gs_tensor * skip, gs_tensor ** out);

/* ---------------------------------------------------------------------------
 * Graphs and thread pools
 * ------------------------------------------------------------------------- */
/* A graph of at most max_nodes nodes, owned by (and freed with) ctx. */
gs_status gs_graph_new(gs_context * ctx, int max_nodes, gs_graph ** out);
/* Add `t` and every node it depends on (once each, in dependency order). */
gs_status gs_graph_build(gs_graph * g, gs_tensor * t);
/* Assign memory to intermediate results and size the scratch buffer for up
 * to n_threads threads; allocates one buffer. Call again after adding
 * nodes. */
gs_status gs_graph_plan(gs_graph * g, int n_threads);
/* Bytes the plan uses: intermediates (after reuse) and scratch. */
gs_status gs_graph_mem(const gs_graph * g, size_t * compute_bytes, size_t * work_bytes);
int       gs_graph_n_nodes(const gs_graph * g);
gs_status gs_graph_node(const gs_graph * g, int i, gs_tensor ** out);
/* Run the planned graph on min(planned n_threads, pool size) of the pool's
 * threads: one pool serves graphs planned for fewer threads (llama.cpp's
 * n_threads for decode vs n_threads_batch for prompts); the rest idle. */
gs_status gs_graph_compute(gs_graph * g, gs_threadpool * tp);

/* A persistent pool of n_threads (the caller's thread is one of them). */
gs_status gs_threadpool_new(int n_threads, gs_threadpool ** out);
void      gs_threadpool_free(gs_threadpool * tp);
int       gs_threadpool_n_threads(const gs_threadpool * tp);

/* cffi-end */

#ifdef __cplusplus
}
#endif

/* The mixture-of-experts ops (gs_top_k, gs_mul_mat_id, ...). */
#include "gs_moe.h"

#endif /* GGML_SPARSE_H */
