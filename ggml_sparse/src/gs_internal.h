/*
 * gs_internal.h - structures shared by the library's sources (not public).
 */
#ifndef GS_INTERNAL_H
#define GS_INTERNAL_H

#include "ggml_sparse.h"
#include "gs_backend.h"
#include "gs_cuda.h"
#include "quants.h"

#include <stdatomic.h>
#include <string.h>

#define GS_MAX_DIMS 4
#define GS_MAX_SRC 6
#define GS_MAX_OP_PARAMS 16
#define GS_MAX_NAME 64
#define GS_ALIGN 64

/* ---- errors ------------------------------------------------------------ */
/* Record a message for gs_last_error() and return `status`. printf-style. */
gs_status gs_set_error(gs_status status, const char * fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define GS_CHECK_ARG(cond, ...) \
    do { if (!(cond)) return gs_set_error(GS_ERR_INVALID_ARG, __VA_ARGS__); } while (0)

/* ---- half / bfloat16 ---------------------------------------------------- */
float   gs_half_to_float(gs_half h);
gs_half gs_float_to_half(float f);
float   gs_bf16_to_float(gs_bf16 h);
gs_bf16 gs_float_to_bf16(float f);
/* Table of all 65536 half -> float values, filled by gs_init(). */
extern float gs_half_table[1 << 16];
#define GS_H2F(h) (gs_half_table[(uint16_t)(h)])
/* ggml's GELU table: gelu of every half value, rounded to half (the formula
 * and rounding: gs_unary_op's GELU in ggml_sparse.h), filled by gs_init(). */
extern gs_half gs_gelu_half_table[1 << 16];

/* One-time process initialisation (tables, CPU detection). Idempotent and
 * thread-safe; every public entry point that needs it calls it. */
void gs_init(void);

/* ---- types ------------------------------------------------------------- */
typedef void (*gs_to_float_fn)(const void * x, float * y, int64_t n);
typedef void (*gs_from_float_fn)(const float * x, void * y, int64_t n);
/* Dot of a weight row x (n elements) with an activation row y of the type's
 * vec_dot_type. */
typedef void (*gs_vec_dot_fn)(int n, float * s, const void * x, const void * y);
/* Dots of nr >= 1 weight rows with nc >= 1 activation rows (a GEMM tile):
 * s[c * bs + r] = dot(x row r, y row c); weight rows are bx bytes apart,
 * activation rows (of the vec_dot_type) by bytes apart. Each result of a
 * vec_dot_tile equals vec_dot's bit for bit (the order of float operations
 * is fixed, see vec_generic.c); a gemm_tile follows the batched order
 * instead (see gs_cpu_type_funcs). */
typedef void (*gs_vec_dot_tile_fn)(int n, float * s, size_t bs, const void * x, size_t bx,
                                   const void * y, size_t by, int nr, int nc);

typedef struct {
    const char * name;
    int64_t blck_size;
    size_t type_size;
    bool is_quantized;
    gs_type vec_dot_type;
    gs_to_float_fn to_float;          /* reference dequantization          */
    gs_from_float_fn from_float_ref;  /* reference quantization (or NULL)  */
} gs_type_traits;

/* NULL-free lookup: returns NULL for ids that are not types we know. */
const gs_type_traits * gs_get_type_traits(gs_type type);

/* Per-type kernels of one SIMD level; NULL where that level has none (the
 * dispatcher then falls back to the next lower level). */
typedef struct {
    gs_from_float_fn from_float;      /* activations -> vec_dot_type       */
    gs_vec_dot_fn vec_dot;
    gs_to_float_fn to_float;
    gs_vec_dot_tile_fn vec_dot_tile;  /* optional: many rows per call    */
    /* Optional: products in llama.cpp's order for batches (N >= 2
     * activation rows) where it uses another kernel than its per-row dot;
     * matmul.c decides when (gs_cpu_gemm_order), vec_generic.c has the
     * scalar reference. */
    gs_vec_dot_tile_fn gemm_tile;
} gs_cpu_type_funcs;

/* Whether a product of weights of `type` {K, M} with N contiguous (or not:
 * b_contiguous) activation rows takes the gemm_tile order (matmul.c). */
bool gs_cpu_gemm_order(gs_type type, int64_t K, int64_t M, int64_t N, bool b_contiguous);

/* Tables for each level, indexed by gs_type. Defined in vec_*.c. */
extern const gs_cpu_type_funcs gs_cpu_funcs_scalar[GS_TYPE_COUNT];
extern const gs_cpu_type_funcs gs_cpu_funcs_avx2[GS_TYPE_COUNT];
extern const gs_cpu_type_funcs gs_cpu_funcs_avx512[GS_TYPE_COUNT];

/* The resolved table in use (after gs_init / gs_cpu_set_level). */
const gs_cpu_type_funcs * gs_cpu_funcs(gs_type type);
/* Resolved functions of a given level (falls back to lower levels). */
gs_cpu_type_funcs gs_cpu_funcs_for(gs_type type, gs_impl level);

/* ---- ops --------------------------------------------------------------- */
typedef enum {
    GS_OP_NONE = 0,     /* leaf: data provided by the caller            */
    GS_OP_VIEW,         /* view/reshape/permute/transpose: no compute   */
    GS_OP_CPY,          /* src0 -> dst (type conversion, any layout)    */
    GS_OP_SET_ROWS,
    GS_OP_GET_ROWS,
    GS_OP_ADD,
    GS_OP_MUL,
    GS_OP_SCALE,
    GS_OP_UNARY,
    GS_OP_GLU,
    GS_OP_RMS_NORM,
    GS_OP_NORM,
    GS_OP_ROPE,
    GS_OP_SOFT_MAX,
    GS_OP_MUL_MAT,
    GS_OP_ATTENTION,
    GS_OP_SPARSE_INDEX,     /* predictor scores -> active-neuron index      */
    GS_OP_MUL_MAT_SPARSE,   /* row-sparse product (gate, up)               */
    GS_OP_AXPY_SPARSE,      /* axpy over rows of ffn_down_t                */
    GS_OP_SPARSE_FFN_BUNDLE, /* fused sparse FFN over neuron records      */
    GS_OP_SPARSE_FFN_UP_DOWN, /* up and down rows of the active neurons  */
    GS_OP_SPARSE_INDEX_REMAP, /* an index restricted to a slice's ids    */
    GS_OP_TOP_K,            /* indices of the k largest per row (gs_moe.h) */
    GS_OP_MUL_MAT_ID,       /* expert-indexed matrix product               */
    GS_OP_MAP_IDS,          /* ids looked up in a map                      */
    GS_OP_MOE_WEIGHTS,      /* routing weights of the chosen experts       */
    GS_OP_MOE_SUM,          /* weighted sum of the experts' outputs        */
    GS_OP_COUNT
} gs_op;

const char * gs_op_name(gs_op op);
/* gs_op_name that never gives NULL (an op newer than a name table). */
static inline const char * gs_op_str(gs_op op) {
    const char * s = gs_op_name(op);
    return s ? s : "?";
}

enum {
    GS_FLAG_OUTPUT = 1,     /* planner never reuses its memory            */
    GS_FLAG_ARENA = 2,      /* data lives in the context arena             */
    GS_FLAG_IN_GRAPH = 4,   /* visited by gs_graph_build                   */
    GS_FLAG_REPACKED = 8,   /* data in a repacked layout (cpu/repack.h):
                               only gs_mul_mat's src[0] may read it      */
};

struct gs_tensor {
    gs_type type;
    int n_dims;
    int64_t ne[GS_MAX_DIMS];        /* elements per dim                  */
    size_t nb[GS_MAX_DIMS];         /* stride in bytes per dim           */
    gs_op op;
    int32_t op_params[GS_MAX_OP_PARAMS];
    gs_tensor * src[GS_MAX_SRC];
    gs_tensor * view_src;           /* for views: the tensor viewed      */
    size_t view_offs;
    void * data;
    uint32_t flags;
    char name[GS_MAX_NAME];
    gs_backend * backend;           /* leaves placed on a device (NULL:
                                       host memory, see gs_backend.h)    */
    void * host_data;               /* a placed leaf's host memory before */
    gs_context * ctx;               /* the context it was made in         */
};

static inline int64_t gs_nelements(const gs_tensor * t) {
    return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
}
static inline int64_t gs_nrows(const gs_tensor * t) {
    return t->ne[1] * t->ne[2] * t->ne[3];
}
/* Bytes of one contiguous row of t's type. */
size_t gs_type_row_size(gs_type type, int64_t n);
bool gs_is_contiguous(const gs_tensor * t);
bool gs_same_shape(const gs_tensor * a, const gs_tensor * b);
/* The tensor that owns the memory a (possibly nested) view refers to. */
gs_tensor * gs_view_base(gs_tensor * t);

/* Create a tensor in ctx without data (op results, views). */
gs_status gs_tensor_alloc_meta(gs_context * ctx, gs_type type, int n_dims,
                               const int64_t * ne, gs_tensor ** out);
/* Arena allocation of n bytes (GS_ALIGN-aligned), NULL when exhausted. */
void * gs_context_alloc(gs_context * ctx, size_t n);

/* ---- CPU compute ------------------------------------------------------- */
typedef struct gs_compute_state {
    atomic_int n_arrived;          /* barrier: threads waiting             */
    atomic_int n_passed;           /* barrier: generations passed          */
    atomic_int error;              /* first gs_status reported, 0 if none  */
    atomic_int error_node;         /* graph node that reported it, or
                                      INT_MAX while none has             */
    char error_msg[512];
} gs_compute_state;

typedef struct {
    int ith, nth;               /* this thread, thread count           */
    int node;                   /* index of the graph node computed    */
    void * wdata;               /* shared scratch buffer               */
    size_t wsize;
    gs_compute_state * state;   /* for gs_barrier / gs_compute_fail    */
} gs_compute_params;

/* Thread ith's own part of the scratch buffer, for ops whose threads never
 * share scratch: wsize / nth bytes (GS_ALIGN-aligned). Every such op uses
 * this same split, so a thread can start one while another still works in
 * its own part for an earlier op. Such ops size their scratch as n_threads
 * times a multiple of GS_ALIGN. */
static inline void * gs_thread_scratch(const gs_compute_params * p) {
    const size_t per = p->wsize / (size_t) p->nth / GS_ALIGN * GS_ALIGN;
    return (uint8_t *) p->wdata + (size_t) p->ith * per;
}

/* Wait until all nth threads of the computation reach this point. */
void gs_barrier(const gs_compute_params * p);
/* Report a run-time error from inside a kernel (first one wins). */
void gs_compute_fail(const gs_compute_params * p, gs_status status, const char * fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Rows [*r0, *r1) of nr handled by thread ith of nth. */
static inline void gs_split_rows(int64_t nr, int ith, int nth, int64_t * r0, int64_t * r1) {
    const int64_t per = (nr + nth - 1) / nth;
    int64_t a = per * ith;
    int64_t b = a + per;
    *r0 = a < nr ? a : nr;
    *r1 = b < nr ? b : nr;
}

/* Scratch bytes a node needs for n_threads (0 for most ops). */
size_t gs_cpu_work_size(const gs_tensor * node, int n_threads);
/* True when each thread uses only its own part of the node's scratch
 * (gs_thread_scratch); false when threads may share it (one reads what
 * another wrote). The graph's barrier planning relies on it: list an op
 * here only if its kernel uses gs_thread_scratch. */
bool gs_cpu_scratch_private(const gs_tensor * node);
/* Compute one node with thread ith of nth (all threads call it). */
void gs_cpu_compute_node(const gs_compute_params * p, gs_tensor * node);

/* Kernels by op family (cpu/ops_*.c, cpu/matmul.c). */
void gs_cpu_op_cpy(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_set_rows(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_get_rows(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_binary(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_scale(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_unary(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_glu(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_rms_norm(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_norm(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_rope(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_soft_max(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_mul_mat(const gs_compute_params * p, gs_tensor * dst);
size_t gs_cpu_mul_mat_work_size(const gs_tensor * dst, int n_threads);
void gs_cpu_op_attention(const gs_compute_params * p, gs_tensor * dst);
size_t gs_cpu_attention_work_size(const gs_tensor * dst, int n_threads);
/* Attention over F16 caches with llama.cpp's arithmetic (ops_attention_f16.c):
 * scratch bytes per thread, and the kernel (scratch: this thread's share). */
size_t gs_cpu_attention_f16_scratch(const gs_tensor * dst);
void gs_cpu_attention_f16_compute(const gs_compute_params * p, gs_tensor * dst, float * scratch);

/* Neuron-sparse FFN kernels (cpu/ops_sparse*.c). */
void gs_cpu_op_sparse_index(const gs_compute_params * p, gs_tensor * dst);
size_t gs_cpu_sparse_index_work_size(const gs_tensor * dst, int n_threads);
void gs_cpu_op_mul_mat_sparse(const gs_compute_params * p, gs_tensor * dst);
size_t gs_cpu_mul_mat_sparse_work_size(const gs_tensor * dst, int n_threads);
void gs_cpu_op_axpy_sparse(const gs_compute_params * p, gs_tensor * dst);
size_t gs_cpu_axpy_sparse_work_size(const gs_tensor * dst, int n_threads);
void gs_cpu_op_sparse_ffn_bundle(const gs_compute_params * p, gs_tensor * dst);
size_t gs_cpu_sparse_ffn_bundle_work_size(const gs_tensor * dst, int n_threads);
void gs_cpu_op_sparse_ffn_up_down(const gs_compute_params * p, gs_tensor * dst);
size_t gs_cpu_sparse_ffn_up_down_work_size(const gs_tensor * dst, int n_threads);
void gs_cpu_op_sparse_index_remap(const gs_compute_params * p, gs_tensor * dst);

/* Mixture-of-experts kernels (cpu/ops_moe.c, cpu/matmul_id.c). */
void gs_cpu_op_top_k(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_map_ids(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_moe_weights(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_moe_sum(const gs_compute_params * p, gs_tensor * dst);
void gs_cpu_op_mul_mat_id(const gs_compute_params * p, gs_tensor * dst);
size_t gs_cpu_mul_mat_id_work_size(const gs_tensor * dst, int n_threads);

/* ---- graphs (graph.c; planned over backends by sched*.c) ---------------- */
struct gs_sched;
struct gs_graph {
    gs_context * ctx;
    int max_nodes;
    int n_nodes;
    gs_tensor ** nodes;       /* op nodes in execution order               */
    gs_tensor ** visited;     /* open-addressing set of visited tensors    */
    int visited_cap;
    bool * sync;              /* sync[i]: barrier before node i            */
    uint8_t * buffer;         /* intermediates, then scratch (host)        */
    size_t compute_bytes;
    size_t work_bytes;
    int planned_threads;      /* 0 while not planned                       */
    struct gs_sched * sched;  /* plan over backends, NULL for gs_graph_plan */
};

/* What a context owns besides its arena (context.c): heap blocks it frees
 * (gs_context_own), and objects it destroys (gs_context_own_fn: destroy(p)
 * instead of free(p); the plans of graphs over backends, tensors placed on
 * devices). gs_context_free calls the destructors first, newest first -
 * they may wait for device work that still uses the context's memory -,
 * then frees the heap blocks, then the arena (so a destructor may still use
 * tensor structs). gs_context_reown replaces a registered pointer (after a
 * realloc), keeping its destructor; gs_context_disown forgets one without
 * calling anything. */
typedef void (*gs_destroy_fn)(void * p);
gs_status gs_context_own(gs_context * ctx, void * p);
gs_status gs_context_own_fn(gs_context * ctx, void * p, gs_destroy_fn destroy);
void gs_context_reown(gs_context * ctx, void * old_p, void * new_p);
void gs_context_disown(gs_context * ctx, void * p);

/* Thread pool: run fn(arg, ith, nth) on all threads, the caller as ith 0. */
typedef void (*gs_pool_fn)(void * arg, int ith, int nth);
/* fn(arg, ith, n) on threads 0..n-1 of the pool (n <= pool size; the others
 * skip the job); returns when all are done. */
void gs_threadpool_run(gs_threadpool * tp, int n, gs_pool_fn fn, void * arg);

/* A new op node `op` of type `type` and shape ne[0..n_dims) in ctx (ops.c; the
 * constructors of every op file record their nodes with it). */
gs_status gs_new_op_node(gs_context * ctx, gs_op op, gs_type type, int n_dims, const int64_t * ne,
                         gs_tensor ** out);
/* The error of an op constructor (ops.c): tensor t of op `op` has the wrong type (`want`
 * names the right ones) / the wrong shape (`why`), with t's name, type or shape. */
gs_status gs_op_type_error(const char * op, const gs_tensor * t, const char * want);
gs_status gs_op_shape_error(const char * op, const gs_tensor * t, const char * why);

#endif /* GS_INTERNAL_H */
