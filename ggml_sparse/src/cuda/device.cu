/*
 * device.cu - devices, memory figures and device buffers (public gs_cuda_*
 * functions), and the translation of CUDA errors into gs_status.
 *
 * The extension links the CUDA runtime statically (cudart_static), so a
 * machine without a driver or GPU loads it fine: the first CUDA call returns
 * cudaErrorNoDevice / cudaErrorInsufficientDriver, which becomes
 * GS_ERR_UNSUPPORTED with the runtime's message.
 */
#include <stdio.h>
#include <stdlib.h>

#include "common.cuh"

gs_status gs_cuda_status(cudaError_t err, const char * what) {
    const char * msg = cudaGetErrorString(err);
    switch (err) {
        case cudaErrorNoDevice:
        case cudaErrorInsufficientDriver:
        case cudaErrorInvalidDevice:
            return gs_set_error(GS_ERR_UNSUPPORTED, "no CUDA device: %s (%s)", msg, what);
        case cudaErrorMemoryAllocation:
            return gs_set_error(GS_ERR_OOM, "CUDA out of memory: %s (%s)", msg, what);
        default:
            return gs_set_error(GS_ERR_RUNTIME, "CUDA error: %s (%s)", msg, what);
    }
}

extern "C" gs_status gs_cuda_device_count(int * out) {
    GS_CHECK_ARG(out, "gs_cuda_device_count: out is NULL");
    *out = 0;
    int n = 0;
    GS_CUDA_TRY(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
    if (n <= 0) return gs_set_error(GS_ERR_UNSUPPORTED, "no CUDA device: the runtime reports 0 devices");
    *out = n;
    return GS_OK;
}

gs_status gs_cuda_use_device(int device) {
    int n;
    gs_status st = gs_cuda_device_count(&n);
    if (st != GS_OK) return st;
    if (device < 0 || device >= n)
        return gs_set_error(GS_ERR_INVALID_ARG, "CUDA device %d does not exist (%d devices)", device, n);
    GS_CUDA_TRY(cudaSetDevice(device), "cudaSetDevice");
    return GS_OK;
}

extern "C" gs_status gs_cuda_mem_info(int device, size_t * free_bytes, size_t * total_bytes) {
    GS_CHECK_ARG(free_bytes && total_bytes, "gs_cuda_mem_info: NULL output");
    gs_status st = gs_cuda_use_device(device);
    if (st != GS_OK) return st;
    GS_CUDA_TRY(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
    return GS_OK;
}

extern "C" gs_status gs_cuda_get_device_info(int device, gs_cuda_device_info * out) {
    GS_CHECK_ARG(out, "gs_cuda_get_device_info: out is NULL");
    gs_status st = gs_cuda_use_device(device);
    if (st != GS_OK) return st;
    cudaDeviceProp p;
    GS_CUDA_TRY(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "%s", p.name);
    out->cc_major = p.major;
    out->cc_minor = p.minor;
    out->n_sm = p.multiProcessorCount;
    return gs_cuda_mem_info(device, &out->free_bytes, &out->total_bytes);
}

struct gs_cuda_buffer {
    int device;
    size_t size;
    void * data;
};

extern "C" gs_status gs_cuda_buffer_new(int device, size_t size, gs_cuda_buffer ** out) {
    GS_CHECK_ARG(out, "gs_cuda_buffer_new: out is NULL");
    *out = NULL;
    GS_CHECK_ARG(size > 0, "gs_cuda_buffer_new: size is 0");
    gs_status st = gs_cuda_use_device(device);
    if (st != GS_OK) return st;
    gs_cuda_buffer * b = (gs_cuda_buffer *) calloc(1, sizeof(*b));
    if (!b) return gs_set_error(GS_ERR_OOM, "gs_cuda_buffer_new: out of host memory");
    cudaError_t err = cudaMalloc(&b->data, size);
    if (err != cudaSuccess) {
        free(b);
        return gs_cuda_status(err, "cudaMalloc");
    }
    b->device = device;
    b->size = size;
    *out = b;
    return GS_OK;
}

extern "C" void gs_cuda_buffer_free(gs_cuda_buffer * buf) {
    if (!buf) return;
    cudaSetDevice(buf->device);
    cudaFree(buf->data);
    free(buf);
}

extern "C" gs_status gs_cuda_buffer_size(const gs_cuda_buffer * buf, size_t * out) {
    GS_CHECK_ARG(buf && out, "gs_cuda_buffer_size: NULL argument");
    *out = buf->size;
    return GS_OK;
}

extern "C" gs_status gs_cuda_upload(gs_cuda_buffer * buf, size_t offset, const void * src, size_t n) {
    GS_CHECK_ARG(buf && (src || n == 0), "gs_cuda_upload: NULL argument");
    GS_CHECK_ARG(offset <= buf->size && n <= buf->size - offset,
                 "gs_cuda_upload: %zu bytes at offset %zu exceed the buffer (%zu bytes)", n, offset,
                 buf->size);
    GS_CUDA_TRY(cudaSetDevice(buf->device), "cudaSetDevice");
    GS_CUDA_TRY(cudaMemcpy((uint8_t *) buf->data + offset, src, n, cudaMemcpyHostToDevice), "upload");
    return GS_OK;
}

extern "C" gs_status gs_cuda_download(const gs_cuda_buffer * buf, size_t offset, void * dst, size_t n) {
    GS_CHECK_ARG(buf && (dst || n == 0), "gs_cuda_download: NULL argument");
    GS_CHECK_ARG(offset <= buf->size && n <= buf->size - offset,
                 "gs_cuda_download: %zu bytes at offset %zu exceed the buffer (%zu bytes)", n, offset,
                 buf->size);
    GS_CUDA_TRY(cudaSetDevice(buf->device), "cudaSetDevice");
    GS_CUDA_TRY(cudaMemcpy(dst, (const uint8_t *) buf->data + offset, n, cudaMemcpyDeviceToHost), "download");
    return GS_OK;
}

gs_status gs_cuda_check_index(const int32_t * idx, int64_t M, int64_t n_tokens) {
    for (int64_t t = 0; t < n_tokens; t++) {
        const int32_t * col = idx + t * (M + 1);
        if (col[0] < 0 || col[0] > M)
            return gs_set_error(GS_ERR_RUNTIME, "sparse index: token %lld has count %d outside [0, %lld]",
                                (long long) t, col[0], (long long) M);
        for (int32_t c = 1; c <= col[0]; c++) {
            if (col[c] < 0 || col[c] >= M || (c > 1 && col[c] <= col[c - 1]))
                return gs_set_error(GS_ERR_RUNTIME,
                                    "sparse index: token %lld entry %d (%d) is out of range or not ascending",
                                    (long long) t, c, col[c]);
        }
    }
    return GS_OK;
}
