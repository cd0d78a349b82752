/*
 * ffn_hybrid.cu - the GPU share of a hybrid FFN layer (gs_cuda_ffn_*).
 *
 * At creation the rows of the hot neurons (gpu_bucket) of gate, up and
 * ffn_down_t are packed into one device allocation: slice row j is neuron
 * bucket[j]. Per token the host hands x (and the predictor's index column);
 * on the FFN's own stream: x and idx go up, one warp per hot row computes
 * h[j] (0 when bucket[j] is not in the index), one thread per output
 * element sums h[j] * down_t slice row j, and y comes back into pinned
 * memory. launch returns at once, so the caller's CPU pool computes the
 * cold rows meanwhile; finish waits and adds.
 *
 * Device layout of the one allocation (each part 256-byte aligned, the
 * sizes the offload planner counts, pyinfer/offload/budget.py):
 *   weights: gate rows, up rows, down_t rows, bucket I32 [n_hot]
 *   scratch: x F32 [E], idx I32 [M + 1], h F32 [n_hot], y F32 [E]
 */
#include "dequant.cuh"
#include "unary.cuh"

#define PART_ALIGN 256

static size_t part(size_t n) { return (n + PART_ALIGN - 1) / PART_ALIGN * PART_ALIGN; }

struct gs_cuda_ffn {
    int device;
    cudaStream_t stream;
    int64_t E, M, n_hot;
    gs_type wtype, dtype;        /* gate/up type, down_t type                  */
    bool has_gate, gate_b;
    gs_unary_op act;
    uint8_t * mem;               /* the one device allocation                  */
    uint8_t * gate, * up, * down;
    int32_t * bucket, * idx;
    float * x, * h, * y;
    float * x_host, * y_host;    /* pinned staging                             */
    int32_t * idx_host;
    size_t weight_bytes, scratch_bytes;
    bool launched;               /* a launch awaits its finish                 */
};

/* Binary search of m among the count ascending ids col[1..count]. */
__device__ bool in_index(const int32_t * col, int32_t m) {
    int lo = 1, hi = col[0];
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        if (col[mid] == m) return true;
        if (col[mid] < m) lo = mid + 1; else hi = mid - 1;
    }
    return false;
}

template <int T>
__global__ void hot_rows_kernel(const uint8_t * gate, const uint8_t * up, size_t row_bytes, const int32_t * bucket,
                                const int32_t * idx, const float * x, float * h, int64_t E, int64_t n_hot,
                                int act, bool gate_b) {
    const int64_t j = (int64_t) blockIdx.x * (blockDim.x / GS_CUDA_WARP) + threadIdx.x / GS_CUDA_WARP;
    const int lane = threadIdx.x % GS_CUDA_WARP;
    if (j >= n_hot) return;
    if (idx && !in_index(idx, bucket[j])) {
        if (lane == 0) h[j] = 0.0f;
        return;
    }
    float g = 0.0f, u = 0.0f;
    for (int64_t i = lane; i < E; i += GS_CUDA_WARP) {
        const float xi = x[i];
        if (gate) g += gs_dq<T>(gate + (size_t) j * row_bytes, i) * xi;
        u += gs_dq<T>(up + (size_t) j * row_bytes, i) * xi;
    }
    g = gs_warp_sum(g);
    u = gs_warp_sum(u);
    if (lane != 0) return;
    if (!gate) h[j] = gs_unary_f(act, u);
    else h[j] = gs_unary_f(act, g) * (gate_b ? gs_unary_f(act, u) : u);
}

template <int T>
__global__ void hot_down_kernel(const uint8_t * down, size_t row_bytes, const float * h, float * y, int64_t E,
                                int64_t n_hot) {
    const int64_t e = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= E) return;
    float s = 0.0f;
    for (int64_t j = 0; j < n_hot; j++)
        if (h[j] != 0.0f) s += h[j] * gs_dq<T>(down + (size_t) j * row_bytes, e);
    y[e] = s;
}

static gs_status check_ffn_args(const gs_tensor * gate, const gs_tensor * up, const gs_tensor * down_t,
                                const int32_t * bucket, int64_t n_hot) {
    GS_CHECK_ARG(up && down_t && (bucket || n_hot == 0), "gs_cuda_ffn_new: NULL argument");
    const int64_t E = up->ne[0], M = up->ne[1];
    GS_CHECK_ARG(up->data && down_t->data && (!gate || gate->data), "gs_cuda_ffn_new: weights need host data");
    if (down_t->ne[0] != E || down_t->ne[1] != M || (gate && (gate->ne[0] != E || gate->ne[1] != M)))
        return gs_set_error(GS_ERR_SHAPE, "gs_cuda_ffn_new: gate/up/down_t must all be {n_embd, n_ff}");
    if (gate && gate->type != up->type)
        return gs_set_error(GS_ERR_TYPE, "gs_cuda_ffn_new: gate and up must have the same type");
    if (!gs_is_contiguous(up) || !gs_is_contiguous(down_t) || (gate && !gs_is_contiguous(gate)))
        return gs_set_error(GS_ERR_SHAPE, "gs_cuda_ffn_new: weights must be contiguous");
    GS_CHECK_ARG(n_hot >= 0 && n_hot <= M, "gs_cuda_ffn_new: n_hot %lld outside [0, %lld]", (long long) n_hot,
                 (long long) M);
    for (int64_t j = 0; j < n_hot; j++)
        GS_CHECK_ARG(bucket[j] >= 0 && bucket[j] < M && (j == 0 || bucket[j] > bucket[j - 1]),
                     "gs_cuda_ffn_new: bucket[%lld] = %d is out of range or not ascending", (long long) j,
                     bucket[j]);
    return GS_OK;
}

/* Pack rows bucket[0..n_hot) of host tensor t into device memory at dst. */
static gs_status upload_rows(const gs_tensor * t, const int32_t * bucket, int64_t n_hot, uint8_t * dst,
                             cudaStream_t s) {
    const size_t rb = gs_type_row_size(t->type, t->ne[0]);
    for (int64_t j = 0; j < n_hot; j++)
        GS_CUDA_TRY(cudaMemcpyAsync(dst + (size_t) j * rb, (const uint8_t *) t->data + (size_t) bucket[j] * t->nb[1],
                                    rb, cudaMemcpyHostToDevice, s), "slice upload");
    return GS_OK;
}

static gs_status ffn_init(gs_cuda_ffn * f, const gs_tensor * gate, const gs_tensor * up, const gs_tensor * down_t,
                          const int32_t * bucket) {
    const int64_t n = f->n_hot;
    const size_t rw = gs_type_row_size(up->type, f->E), rd = gs_type_row_size(down_t->type, f->E);
    const size_t g_b = gate ? part(n * rw) : 0, u_b = part(n * rw), d_b = part(n * rd), k_b = part(4 * n);
    f->weight_bytes = g_b + u_b + d_b + k_b;
    f->scratch_bytes = part(4 * f->E) + part(4 * (f->M + 1)) + part(4 * n) + part(4 * f->E);
    GS_CUDA_TRY(cudaStreamCreateWithFlags(&f->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    GS_CUDA_TRY(cudaMalloc((void **) &f->mem, f->weight_bytes + f->scratch_bytes), "cudaMalloc FFN slice");
    uint8_t * p = f->mem;
    f->gate = gate ? p : NULL; p += g_b;
    f->up = p; p += u_b;
    f->down = p; p += d_b;
    f->bucket = (int32_t *) p; p += k_b;
    f->x = (float *) p; p += part(4 * f->E);
    f->idx = (int32_t *) p; p += part(4 * (f->M + 1));
    f->h = (float *) p; p += part(4 * n);
    f->y = (float *) p;
    GS_CUDA_TRY(cudaMallocHost((void **) &f->x_host, sizeof(float) * f->E), "pinned x");
    GS_CUDA_TRY(cudaMallocHost((void **) &f->y_host, sizeof(float) * f->E), "pinned y");
    GS_CUDA_TRY(cudaMallocHost((void **) &f->idx_host, sizeof(int32_t) * (f->M + 1)), "pinned idx");
    gs_status st = gate ? upload_rows(gate, bucket, n, f->gate, f->stream) : GS_OK;
    if (st == GS_OK) st = upload_rows(up, bucket, n, f->up, f->stream);
    if (st == GS_OK) st = upload_rows(down_t, bucket, n, f->down, f->stream);
    if (st != GS_OK) return st;
    if (n > 0) GS_CUDA_TRY(cudaMemcpyAsync(f->bucket, bucket, 4 * n, cudaMemcpyHostToDevice, f->stream), "bucket");
    GS_CUDA_TRY(cudaStreamSynchronize(f->stream), "slice upload");
    return GS_OK;
}

extern "C" gs_status gs_cuda_ffn_new(int device, const gs_tensor * gate, const gs_tensor * up,
                                     const gs_tensor * down_t, const int32_t * bucket, int64_t n_hot,
                                     gs_unary_op act, bool gate_b, gs_cuda_ffn ** out) {
    GS_CHECK_ARG(out, "gs_cuda_ffn_new: out is NULL");
    *out = NULL;
    gs_status st = check_ffn_args(gate, up, down_t, bucket, n_hot);
    if (st == GS_OK) st = gs_cuda_use_device(device);
    if (st != GS_OK) return st;
    gs_cuda_ffn * f = (gs_cuda_ffn *) calloc(1, sizeof(*f));
    if (!f) return gs_set_error(GS_ERR_OOM, "gs_cuda_ffn_new: out of host memory");
    f->device = device;
    f->E = up->ne[0];
    f->M = up->ne[1];
    f->n_hot = n_hot;
    f->wtype = up->type;
    f->dtype = down_t->type;
    f->has_gate = gate != NULL;
    f->gate_b = gate_b;
    f->act = act;
    st = ffn_init(f, gate, up, down_t, bucket);
    if (st != GS_OK) {
        gs_cuda_ffn_free(f);
        return st;
    }
    *out = f;
    return GS_OK;
}

extern "C" void gs_cuda_ffn_free(gs_cuda_ffn * f) {
    if (!f) return;
    cudaSetDevice(f->device);
    if (f->stream) cudaStreamSynchronize(f->stream);
    cudaFree(f->mem);
    cudaFreeHost(f->x_host);
    cudaFreeHost(f->y_host);
    cudaFreeHost(f->idx_host);
    if (f->stream) cudaStreamDestroy(f->stream);
    free(f);
}

extern "C" gs_status gs_cuda_ffn_mem(const gs_cuda_ffn * f, size_t * weight_bytes, size_t * scratch_bytes) {
    GS_CHECK_ARG(f && weight_bytes && scratch_bytes, "gs_cuda_ffn_mem: NULL argument");
    *weight_bytes = f->weight_bytes;
    *scratch_bytes = f->scratch_bytes;
    return GS_OK;
}

extern "C" gs_status gs_cuda_ffn_launch(gs_cuda_ffn * f, const float * x, const int32_t * idx) {
    GS_CHECK_ARG(f && x, "gs_cuda_ffn_launch: NULL argument");
    if (f->launched) return gs_set_error(GS_ERR_STATE, "gs_cuda_ffn_launch: the previous launch was not finished");
    if (idx) {
        gs_status st = gs_cuda_check_index(idx, f->M, 1);
        if (st != GS_OK) return st;
    }
    GS_CUDA_TRY(cudaSetDevice(f->device), "cudaSetDevice");
    memcpy(f->x_host, x, sizeof(float) * f->E);
    if (idx) memcpy(f->idx_host, idx, sizeof(int32_t) * (idx[0] + 1));
    cudaStream_t s = f->stream;
    GS_CUDA_TRY(cudaMemcpyAsync(f->x, f->x_host, sizeof(float) * f->E, cudaMemcpyHostToDevice, s), "x upload");
    if (idx)
        GS_CUDA_TRY(cudaMemcpyAsync(f->idx, f->idx_host, sizeof(int32_t) * (idx[0] + 1), cudaMemcpyHostToDevice, s),
                    "idx upload");
    const int rows_per_block = 8;
    const unsigned g1 = (unsigned) ((f->n_hot + rows_per_block - 1) / rows_per_block);
    const unsigned g2 = (unsigned) ((f->E + 255) / 256);
    const size_t rw = gs_type_row_size(f->wtype, f->E), rd = gs_type_row_size(f->dtype, f->E);
    const int32_t * ix = idx ? f->idx : NULL;
    if (f->n_hot > 0) {
        GS_CUDA_TYPE_SWITCH(f->wtype, (hot_rows_kernel<TT><<<g1, rows_per_block * GS_CUDA_WARP, 0, s>>>(
                                          f->gate, f->up, rw, f->bucket, ix, f->x, f->h, f->E, f->n_hot,
                                          (int) f->act, f->gate_b)))
        GS_CUDA_LAUNCHED("hybrid FFN rows");
        GS_CUDA_TYPE_SWITCH(f->dtype, (hot_down_kernel<TT><<<g2, 256, 0, s>>>(f->down, rd, f->h, f->y, f->E, f->n_hot)))
        GS_CUDA_LAUNCHED("hybrid FFN down");
    } else {
        GS_CUDA_TRY(cudaMemsetAsync(f->y, 0, sizeof(float) * f->E, s), "y clear");
    }
    GS_CUDA_TRY(cudaMemcpyAsync(f->y_host, f->y, sizeof(float) * f->E, cudaMemcpyDeviceToHost, s), "y download");
    f->launched = true;
    return GS_OK;
}

extern "C" gs_status gs_cuda_ffn_finish(gs_cuda_ffn * f, float * y) {
    GS_CHECK_ARG(f && y, "gs_cuda_ffn_finish: NULL argument");
    if (!f->launched) return gs_set_error(GS_ERR_STATE, "gs_cuda_ffn_finish: nothing was launched");
    f->launched = false;
    GS_CUDA_TRY(cudaStreamSynchronize(f->stream), "hybrid FFN");
    for (int64_t e = 0; e < f->E; e++) y[e] += f->y_host[e];
    return GS_OK;
}

extern "C" gs_status gs_cuda_ffn_hybrid(gs_cuda_ffn * f, const float * x, const int32_t * idx, gs_graph * cold,
                                        gs_threadpool * tp, const gs_tensor * cold_out, float * y) {
    GS_CHECK_ARG(f && cold && tp && cold_out && y, "gs_cuda_ffn_hybrid: NULL argument");
    if (cold_out->type != GS_TYPE_F32 || gs_nelements(cold_out) != f->E)
        return gs_set_error(GS_ERR_SHAPE, "gs_cuda_ffn_hybrid: cold_out must be F32 with n_embd elements");
    gs_status st = gs_cuda_ffn_launch(f, x, idx);
    if (st != GS_OK) return st;
    st = gs_graph_compute(cold, tp);   /* the CPU's cold rows while the GPU runs */
    if (st != GS_OK) {
        cudaStreamSynchronize(f->stream);
        f->launched = false;
        return st;
    }
    memcpy(y, cold_out->data, sizeof(float) * f->E);
    return gs_cuda_ffn_finish(f, y);
}
