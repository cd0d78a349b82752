/*
 * gs_cuda.h - the CUDA backend of ggml_sparse (public).
 *
 * Device queries, device buffers, one op node run on the device (for per-op
 * CUDA-vs-CPU tests) and PowerInfer's hybrid FFN with the hot neurons' rows
 * resident on the GPU. Declared in every build: without CUDA each call
 * answers GS_ERR_UNSUPPORTED (see below). Types and conventions are
 * ggml_sparse.h's.
 *
 * The block between "cffi-begin" and "cffi-end" is read verbatim by the
 * Python binding's build (cffi), after ggml_sparse.h's and gs_backend.h's.
 */
#ifndef GS_CUDA_H
#define GS_CUDA_H

#include "ggml_sparse.h"
#include "gs_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cffi-begin */

/* ---------------------------------------------------------------------------
 * CUDA backend (GS_CUDA builds). Always declared: in a build without CUDA
 * every function returns GS_ERR_UNSUPPORTED "CUDA not built"; in a CUDA
 * build on a machine without a driver or GPU, GS_ERR_UNSUPPORTED "no CUDA
 * device: ...". Device ids are CUDA's (0 .. count - 1).
 * ------------------------------------------------------------------------- */
typedef struct {
    char   name[256];
    int    cc_major, cc_minor;  /* compute capability                      */
    int    n_sm;                /* streaming multiprocessors               */
    size_t free_bytes;          /* cudaMemGetInfo at the time of the call  */
    size_t total_bytes;
} gs_cuda_device_info;

/* Number of usable devices (>= 1 on success). */
gs_status gs_cuda_device_count(int * out);
gs_status gs_cuda_get_device_info(int device, gs_cuda_device_info * out);
/* Free and total device memory now (cudaMemGetInfo). */
gs_status gs_cuda_mem_info(int device, size_t * free_bytes, size_t * total_bytes);

/* Device memory of `size` bytes (one cudaMalloc). */
typedef struct gs_cuda_buffer gs_cuda_buffer;
gs_status gs_cuda_buffer_new(int device, size_t size, gs_cuda_buffer ** out);
void      gs_cuda_buffer_free(gs_cuda_buffer * buf);
gs_status gs_cuda_buffer_size(const gs_cuda_buffer * buf, size_t * out);
/* Copy n bytes host -> device at byte offset (bounds checked), and back. */
gs_status gs_cuda_upload(gs_cuda_buffer * buf, size_t offset, const void * src, size_t n);
gs_status gs_cuda_download(const gs_cuda_buffer * buf, size_t offset, void * dst, size_t n);

/* Run one recorded op node on the device: its sources (contiguous, with
 * host data: leaves, or results of a planned and computed graph) are copied
 * to device tensors, the op's CUDA kernel runs, and the result (contiguous,
 * gs_tensor_nbytes(node) bytes; for set_rows all of dst) is copied into
 * `out` (out_size must equal that size). Index inputs are checked as the CPU
 * ops check them. Ops: every op of the llama forward and the sparse ops
 * (cpy only to F32/F16; set_rows into F32/F16). For per-op CUDA-vs-CPU tests;
 * inference keeps weights resident (gs_cuda_ffn). */
gs_status gs_cuda_compute_node(int device, gs_tensor * node, void * out, size_t out_size);

/* Hybrid FFN of one layer. The GPU keeps the rows of the hot neurons
 * `bucket` (n_hot ascending neuron ids in [0, M), a layer's gpu_bucket) of
 * gate and up ({E, M}, gate NULL for falcon/opt) and of ffn_down_t ({E, M},
 * row m = neuron m's output weights), any weight types. Per token:
 *   h[m] = act(gate row m . x) * up row m . x   (gate present, !gate_b)
 *   h[m] = act(gate . x) * act(up . x)          (gate_b: bamboo)
 *   h[m] = act(up row m . x)                    (gate NULL)
 *   y    = sum over active hot m of h[m] * down_t row m
 * where "active" follows the predictor's index (as gs_mul_mat_sparse; NULL:
 * all). The CPU computes the cold rows with the same index and skip =
 * gpu_idx; the two partial outputs add up to the whole FFN. */
typedef struct gs_cuda_ffn gs_cuda_ffn;
gs_status gs_cuda_ffn_new(int device, const gs_tensor * gate, const gs_tensor * up,
                          const gs_tensor * down_t, const int32_t * bucket, int64_t n_hot,
                          gs_unary_op act, bool gate_b, gs_cuda_ffn ** out);
void      gs_cuda_ffn_free(gs_cuda_ffn * f);
/* Device bytes held: the weight slices, and the per-token scratch (x, index,
 * mask, activations, output; pinned host staging is not device memory). */
gs_status gs_cuda_ffn_mem(const gs_cuda_ffn * f, size_t * weight_bytes, size_t * scratch_bytes);
/* Start the GPU share for one token on the FFN's stream and return at once:
 * x F32 [E] (copied into pinned staging before returning), idx I32 [M + 1]
 * (the token's active-neuron column) or NULL for every neuron. */
gs_status gs_cuda_ffn_launch(gs_cuda_ffn * f, const float * x, const int32_t * idx);
/* Wait for the launched share and add it to y F32 [E] (y += GPU part). */
gs_status gs_cuda_ffn_finish(gs_cuda_ffn * f, float * y);
/* The whole hybrid step: launch the GPU share, run the planned CPU graph
 * `cold` on tp meanwhile (its output tensor `cold_out` F32 [E] holds the
 * cold rows' sum, e.g. gs_axpy_sparse with skip = gpu_idx), then
 * y = cold_out + GPU part. Only x and y cross PCIe. */
gs_status gs_cuda_ffn_hybrid(gs_cuda_ffn * f, const float * x, const int32_t * idx,
                             gs_graph * cold, gs_threadpool * tp, const gs_tensor * cold_out,
                             float * y);

/* The CUDA device as a backend of the scheduler (gs_backend.h): the same
 * table as the stand-in (gs_backend_standin_new) with device memory, copies
 * on one stream and the CUDA kernels. `arena_bytes` (>= 1) is the budget:
 * one cudaMalloc of that size that every placement and plan on it is carved
 * from, first-fit in multiples of 64 bytes (GS_ERR_OOM past it). Copies are
 * counted in gs_backend_stats as the stand-in counts them. A device split
 * runs as kernel launches on the stream; nodes the kernels cannot run (an op
 * without a CUDA kernel, a non-contiguous result or source: strided or
 * permuted views) make gs_graph_plan_backends fail with GS_ERR_UNSUPPORTED
 * naming the node and why. Results agree with the CPU's within rounding,
 * not bit for bit. Index inputs (get_rows, set_rows, the sparse index) are
 * not checked on the device: an out-of-range entry reads or writes nothing
 * (attention positions are clamped into the cache) instead of failing as on
 * the CPU. Answers GS_ERR_UNSUPPORTED "CUDA not
 * built" without CUDA and "no CUDA device: ..." in a CUDA build without a
 * usable device. Free it with gs_backend_free. */
gs_status gs_backend_cuda_new(int device, size_t arena_bytes, gs_backend ** out);

/* cffi-end */

#ifdef __cplusplus
}
#endif

#endif /* GS_CUDA_H */
