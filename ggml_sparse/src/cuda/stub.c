/*
 * stub.c - the CUDA section of the API in a build without CUDA (GS_CUDA
 * off or no nvcc): every call says so with GS_ERR_UNSUPPORTED.
 */
#include "../gs_internal.h"

#define NOT_BUILT() \
    gs_set_error(GS_ERR_UNSUPPORTED, "CUDA not built: this ggml_sparse was compiled without the CUDA " \
                 "backend (build with nvcc present, or -DGS_CUDA=ON)")

gs_status gs_cuda_device_count(int * out) {
    if (out) *out = 0;
    return NOT_BUILT();
}
gs_status gs_cuda_get_device_info(int device, gs_cuda_device_info * out) { return NOT_BUILT(); }
gs_status gs_cuda_mem_info(int device, size_t * free_bytes, size_t * total_bytes) { return NOT_BUILT(); }
gs_status gs_cuda_buffer_new(int device, size_t size, gs_cuda_buffer ** out) {
    if (out) *out = NULL;
    return NOT_BUILT();
}
void gs_cuda_buffer_free(gs_cuda_buffer * buf) {}
gs_status gs_cuda_buffer_size(const gs_cuda_buffer * buf, size_t * out) { return NOT_BUILT(); }
gs_status gs_cuda_upload(gs_cuda_buffer * buf, size_t offset, const void * src, size_t n) { return NOT_BUILT(); }
gs_status gs_cuda_download(const gs_cuda_buffer * buf, size_t offset, void * dst, size_t n) { return NOT_BUILT(); }
gs_status gs_cuda_compute_node(int device, gs_tensor * node, void * out, size_t out_size) { return NOT_BUILT(); }
gs_status gs_cuda_ffn_new(int device, const gs_tensor * gate, const gs_tensor * up, const gs_tensor * down_t,
                          const int32_t * bucket, int64_t n_hot, gs_unary_op act, bool gate_b,
                          gs_cuda_ffn ** out) {
    if (out) *out = NULL;
    return NOT_BUILT();
}
void gs_cuda_ffn_free(gs_cuda_ffn * f) {}
gs_status gs_cuda_ffn_mem(const gs_cuda_ffn * f, size_t * weight_bytes, size_t * scratch_bytes) {
    return NOT_BUILT();
}
gs_status gs_cuda_ffn_launch(gs_cuda_ffn * f, const float * x, const int32_t * idx) { return NOT_BUILT(); }
gs_status gs_cuda_ffn_finish(gs_cuda_ffn * f, float * y) { return NOT_BUILT(); }
gs_status gs_cuda_ffn_hybrid(gs_cuda_ffn * f, const float * x, const int32_t * idx, gs_graph * cold,
                             gs_threadpool * tp, const gs_tensor * cold_out, float * y) {
    return NOT_BUILT();
}
gs_status gs_backend_cuda_new(int device, size_t arena_bytes, gs_backend ** out) {
    if (out) *out = NULL;
    return NOT_BUILT();
}
