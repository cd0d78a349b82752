/*
 * elementwise.cu - F32 element-wise ops on contiguous tensors: add/mul with
 * broadcast (b's dims repeat over a's), scale, unary activations and gated
 * products (GLU). One thread per element.
 */
#include "unary.cuh"

struct shape4 { int64_t n0, n1, n2, n3; };

__global__ void binary_kernel(bool is_add, const float * a, shape4 sa, const float * b, shape4 sb,
                              float * out) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= sa.n0 * sa.n1 * sa.n2 * sa.n3) return;
    const int64_t i0 = i % sa.n0, i1 = (i / sa.n0) % sa.n1, i2 = (i / (sa.n0 * sa.n1)) % sa.n2,
                  i3 = i / (sa.n0 * sa.n1 * sa.n2);
    const float y = b[(i0 % sb.n0) + sb.n0 * ((i1 % sb.n1) + sb.n1 * ((i2 % sb.n2) + sb.n2 * (i3 % sb.n3)))];
    out[i] = is_add ? a[i] + y : a[i] * y;
}

static shape4 shape_of(const gs_dt * t) { return shape4{t->ne[0], t->ne[1], t->ne[2], t->ne[3]}; }
static unsigned blocks(int64_t n) { return (unsigned) ((n + 255) / 256); }

gs_status gs_cuda_binary(bool is_add, const gs_dt * a, const gs_dt * b, gs_dt * out, cudaStream_t s) {
    binary_kernel<<<blocks(gs_dt_nel(a)), 256, 0, s>>>(is_add, (const float *) a->data, shape_of(a),
                                                         (const float *) b->data, shape_of(b), (float *) out->data);
    GS_CUDA_LAUNCHED("add/mul");
    return GS_OK;
}

__global__ void scale_kernel(const float * a, float v, float * out, int64_t n) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] * v;
}

gs_status gs_cuda_scale(const gs_dt * a, float v, gs_dt * out, cudaStream_t s) {
    const int64_t n = gs_dt_nel(a);
    scale_kernel<<<blocks(n), 256, 0, s>>>((const float *) a->data, v, (float *) out->data, n);
    GS_CUDA_LAUNCHED("scale");
    return GS_OK;
}

__global__ void unary_kernel(int op, const float * a, float * out, int64_t n) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = gs_unary_f(op, a[i]);
}

gs_status gs_cuda_unary(const gs_dt * a, gs_unary_op op, gs_dt * out, cudaStream_t s) {
    const int64_t n = gs_dt_nel(a);
    unary_kernel<<<blocks(n), 256, 0, s>>>((int) op, (const float *) a->data, (float *) out->data, n);
    GS_CUDA_LAUNCHED("unary");
    return GS_OK;
}

__global__ void glu_kernel(int op, bool gate_b, const float * a, const float * b, float * out, int64_t n) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = gs_unary_f(op, a[i]) * (gate_b ? gs_unary_f(op, b[i]) : b[i]);
}

gs_status gs_cuda_glu(const gs_dt * a, const gs_dt * b, gs_unary_op op, bool gate_b, gs_dt * out,
                      cudaStream_t s) {
    const int64_t n = gs_dt_nel(a);
    glu_kernel<<<blocks(n), 256, 0, s>>>((int) op, gate_b, (const float *) a->data, (const float *) b->data,
                                         (float *) out->data, n);
    GS_CUDA_LAUNCHED("glu");
    return GS_OK;
}
