/*
 * common.cuh - what every CUDA source of ggml_sparse shares: the C API's
 * headers, error helpers (a failed CUDA call becomes a gs_status with the
 * CUDA message, never an abort), and the device view of a contiguous tensor.
 *
 * Every kernel in this folder works on contiguous device tensors: `dt`
 * carries the type, ne (ggml order, ne[0] innermost) and the device pointer.
 */
#ifndef GS_CUDA_COMMON_CUH
#define GS_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include <atomic>

/* gs_internal.h is C11; its <stdatomic.h> types mean nothing to C++17. The
 * CUDA sources never touch the CPU compute state that uses them, so the C++
 * atomic of the same size stands in. */
using atomic_int = std::atomic<int>;

extern "C" {
#include "../gs_internal.h"
}

/* Turn a cudaError_t into a gs_status (GS_ERR_OOM for allocation failures,
 * GS_ERR_UNSUPPORTED for "no device/driver", GS_ERR_RUNTIME otherwise). */
gs_status gs_cuda_status(cudaError_t err, const char * what);

#define GS_CUDA_TRY(call, what)                                              \
    do {                                                                     \
        cudaError_t err_ = (call);                                           \
        if (err_ != cudaSuccess) return gs_cuda_status(err_, what);          \
    } while (0)

/* Launch check after a kernel: a launch error becomes a status. */
#define GS_CUDA_LAUNCHED(what) GS_CUDA_TRY(cudaGetLastError(), what)

/* Make `device` current, checking that it exists (status + message). */
gs_status gs_cuda_use_device(int device);

/* A contiguous tensor on the device. */
typedef struct {
    gs_type type;
    int64_t ne[4];
    void * data;
} gs_dt;

static inline int64_t gs_dt_nrows(const gs_dt * t) { return t->ne[1] * t->ne[2] * t->ne[3]; }
static inline int64_t gs_dt_nel(const gs_dt * t) { return t->ne[0] * gs_dt_nrows(t); }

#define GS_CUDA_WARP 32

/* Launchers, one family per .cu file (each returns a status, on stream s). */
gs_status gs_cuda_mul_mat(const gs_dt * a, const gs_dt * b, gs_dt * out, cudaStream_t s);
gs_status gs_cuda_dequantize(const gs_dt * a, float * out, cudaStream_t s);
gs_status gs_cuda_get_rows(const gs_dt * a, const gs_dt * idx, gs_dt * out, cudaStream_t s);
gs_status gs_cuda_set_rows(gs_dt * dst, const gs_dt * src, const gs_dt * idx, cudaStream_t s);
gs_status gs_cuda_cpy(const gs_dt * a, gs_dt * out, cudaStream_t s);
gs_status gs_cuda_binary(bool is_add, const gs_dt * a, const gs_dt * b, gs_dt * out, cudaStream_t s);
gs_status gs_cuda_scale(const gs_dt * a, float v, gs_dt * out, cudaStream_t s);
gs_status gs_cuda_unary(const gs_dt * a, gs_unary_op op, gs_dt * out, cudaStream_t s);
gs_status gs_cuda_glu(const gs_dt * a, const gs_dt * b, gs_unary_op op, bool gate_b, gs_dt * out,
                      cudaStream_t s);
gs_status gs_cuda_rms_norm(const gs_dt * a, float eps, bool rms, gs_dt * out, cudaStream_t s);
gs_status gs_cuda_rope(const gs_dt * a, const gs_dt * pos, const int32_t * params, gs_dt * out,
                       cudaStream_t s);
/* gs_cuda_rope with the node's frequency factors (src[2]; NULL or no data: none). */
gs_status gs_cuda_rope_ext(const gs_dt * a, const gs_dt * pos, const gs_dt * ff, const int32_t * params,
                           gs_dt * out, cudaStream_t s);
gs_status gs_cuda_soft_max(const gs_dt * a, const gs_dt * mask, float scale, gs_dt * out,
                           cudaStream_t s);
gs_status gs_cuda_attention(const gs_dt * q, const gs_dt * k, const gs_dt * v, const gs_dt * pos,
                            float scale, int n_swa, float softcap, gs_dt * out, cudaStream_t s);
gs_status gs_cuda_sparse_index(const gs_dt * score, float threshold, gs_dt * out, cudaStream_t s);
/* Row-sparse product and axpy (sparse.cu); idx/skip may have NULL data. */
gs_status gs_cuda_mul_mat_sparse(const gs_dt * a, const gs_dt * b, const gs_dt * idx,
                                 const gs_dt * skip, gs_dt * out, cudaStream_t s);
gs_status gs_cuda_axpy_sparse(const gs_dt * a, const gs_dt * act, const gs_dt * idx,
                              const gs_dt * skip, gs_dt * out, cudaStream_t s);

/* gs_sparse_index_remap (sparse_remap.cu): idx I32 {M + 1, N}, map I32 {M},
 * out I32 {n_out + 1, N}. */
gs_status gs_cuda_sparse_index_remap(const gs_dt * idx, const gs_dt * map, gs_dt * out, cudaStream_t s);

/* Run `node` (compute.cu's op table) on stream s with its sources src[0..4)
 * (type NONE / data NULL where absent) and result dst, all device tensors;
 * set_rows writes src[2]. Launch errors and ops without a kernel are a
 * status. gs_cuda_has_kernel: whether gs_cuda_launch_node knows the op. */
gs_status gs_cuda_launch_node(const gs_tensor * node, gs_dt * src, gs_dt * dst, cudaStream_t s);
bool gs_cuda_has_kernel(gs_op op);

/* Check an active-neuron index (host copy) as the CPU ops do: I32
 * {M + 1, n_tokens}, count in [0, M], ids ascending in [0, M). */
gs_status gs_cuda_check_index(const int32_t * idx, int64_t M, int64_t n_tokens);

#endif /* GS_CUDA_COMMON_CUH */
